"""SSSE 3.00 authentication: the card proves itself to the PSAM, the PSAM opens EF06 on the card.

The card side is public practice (GET CHALLENGE, INTERNAL AUTHENTICATE 00 88 with 16 bytes,
EXTERNAL AUTHENTICATE 00 82 00 0A with the RKSSSE cryptogram). The PSAM side is vendor
specific and not published, so the two PSAM commands below are **this project's own
convention**, implemented by the project's virtual PSAM and to be mapped onto a real PSAM
vendor's commands by a backend if one is ever used:

- `80 F0 <alg> 00 30` VERIFY CARD: card identification code (16, from which the PSAM
  diversifies the card's key) || the 16-byte INTERNAL AUTHENTICATE challenge || the
  card's 16-byte answer. 9000 when the card is genuine, 6300 when the answer is wrong.
- `80 F2 <alg> <key id> 20 10` EXTERNAL CRYPTOGRAM: card identification code (16) || the
  card's 16-byte challenge; answers the 16-byte cryptogram for EXTERNAL AUTHENTICATE.

Because the two PSAM commands are a convention, a PSAM of another scheme does not know them.
Its refusal is the terminal's shortcoming, not evidence against the card, so a failed
authentication raises one of two errors: `PsamCannotAuthenticate` when a PSAM step answered a
status word of `PSAM_CANNOT_AUTHENTICATE_SW` (the PSAM does not know or offer the command, the
key or the algorithm), or refused SELECT or GET CHALLENGE at all (steps that carry nothing of
the card), `CardNotGenuine` for everything else (the card's answer did not verify,
6300; the card refused the cryptogram; an answer was malformed). Anything not known to be the
PSAM's shortcoming counts against the card: the check fails closed.

P1 carries the algorithm id from the SSSE FCI (9F0C 86 01 xx). The PSAM application holding
these keys is selected by AID, configurable in `PsamSsseConfig` (default D15600000590, the
application a public reader selects; treat it as an example). No cryptography happens here:
the card and the PSAM compute; this module only moves bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from protocols.apdu import CommandApdu
from protocols.codecs import Raw
from protocols.errors import ProtocolError
from protocols.exchange import Transmit, command
from protocols.layout import Layout
from protocols.ssse import RKSSSE_KEY_ID, ItemValue, external_authenticate, get_challenge, internal_authenticate
from protocols.status import CardStatusError

DEFAULT_PSAM_SSSE_AID = bytes.fromhex("D15600000590")
INS_VERIFY_CARD = 0xF0
INS_EXTERNAL_CRYPTOGRAM = 0xF2
SW_CARD_NOT_GENUINE = 0x6300


@dataclass(frozen=True)
class PsamSsseConfig:
    """Where the PSAM keeps the SSSE keys and which external key the card expects."""

    aid: bytes = DEFAULT_PSAM_SSSE_AID
    key_id: int = RKSSSE_KEY_ID
    select: bool = True


@dataclass(frozen=True)
class VerifyCardRequest:
    """Data of the project's PSAM VERIFY CARD (80 F0)."""

    card_identification_code: bytes
    challenge: bytes
    card_answer: bytes


VERIFY_CARD_LAYOUT: Layout[VerifyCardRequest] = Layout(
    "PSAM VERIFY CARD data",
    VerifyCardRequest,
    [("card_identification_code", Raw(16)), ("challenge", Raw(16)), ("card_answer", Raw(16))],
)


@dataclass(frozen=True)
class CryptogramRequest:
    """Data of the project's PSAM EXTERNAL CRYPTOGRAM (80 F2)."""

    card_identification_code: bytes
    card_challenge: bytes


CRYPTOGRAM_REQUEST_LAYOUT: Layout[CryptogramRequest] = Layout(
    "PSAM EXTERNAL CRYPTOGRAM data",
    CryptogramRequest,
    [("card_identification_code", Raw(16)), ("card_challenge", Raw(16))],
)


@dataclass(frozen=True)
class Block16:
    """A 16-byte block: an INTERNAL AUTHENTICATE answer, a challenge, a cryptogram."""

    block: bytes


BLOCK16_LAYOUT: Layout[Block16] = Layout("16-byte block", Block16, [("block", Raw(16))])


@dataclass(frozen=True)
class Block8:
    """An 8-byte challenge."""

    block: bytes


BLOCK8_LAYOUT: Layout[Block8] = Layout("8-byte challenge", Block8, [("block", Raw(8))])


def psam_select(aid: bytes = DEFAULT_PSAM_SSSE_AID) -> CommandApdu:
    return CommandApdu(0x00, 0xA4, 0x04, 0x00, aid)


def psam_verify_card(request: VerifyCardRequest, algorithm_id: int) -> CommandApdu:
    return CommandApdu(0x80, INS_VERIFY_CARD, algorithm_id, 0x00, VERIFY_CARD_LAYOUT.build(request))


def psam_external_cryptogram(request: CryptogramRequest, algorithm_id: int, key_id: int) -> CommandApdu:
    data = CRYPTOGRAM_REQUEST_LAYOUT.build(request)
    return CommandApdu(0x80, INS_EXTERNAL_CRYPTOGRAM, algorithm_id, key_id, data, 16)


class AuthStep(enum.Enum):
    """Where an SSSE authentication stopped."""

    PSAM_SELECT = "psam select"
    CARD_CHALLENGE = "card challenge"
    PSAM_CHALLENGE = "psam challenge"
    INTERNAL_AUTHENTICATE = "internal authenticate"
    PSAM_VERIFY_CARD = "psam verify card"
    CARD_CHALLENGE_EXTERNAL = "card challenge for external authenticate"
    PSAM_CRYPTOGRAM = "psam external cryptogram"
    EXTERNAL_AUTHENTICATE = "external authenticate"


PSAM_STEPS = frozenset(
    {AuthStep.PSAM_SELECT, AuthStep.PSAM_CHALLENGE, AuthStep.PSAM_VERIFY_CARD, AuthStep.PSAM_CRYPTOGRAM}
)
"""The steps whose command goes to the PSAM (the others go to the card)."""

PSAM_BEFORE_CARD_DATA = frozenset({AuthStep.PSAM_SELECT, AuthStep.PSAM_CHALLENGE})
"""PSAM steps that carry nothing of the card: whatever status the PSAM answers there (a glitch,
6F00, a memory error), it says nothing about the card, so it never refuses the card."""

PSAM_CANNOT_AUTHENTICATE_SW: Mapping[int, str] = {
    0x6D00: "the PSAM does not know the command",
    0x6E00: "the PSAM does not know the command class",
    0x6A81: "the PSAM does not support the function",
    0x6A82: "the PSAM has no SSSE key application",
    0x6A86: "the PSAM does not hold the algorithm or key asked for",
    0x6B00: "the PSAM does not hold the algorithm or key asked for",
    0x6A88: "the PSAM does not hold the key asked for",
}
"""Status words by which a PSAM step says the PSAM cannot do it (ISO 7816-4 meanings), and how
each is told to an operator. Only these, and only from a PSAM step, clear the card: 6300 from
VERIFY CARD is the PSAM's verdict that the card is not genuine."""


class SsseAuthenticationFailed(Exception):
    """The 3.00 authentication stopped at `step`; `cause` is the status or malformed answer.

    Raised as one of its two subclasses, which say whom the failure speaks against.
    """

    def __init__(self, step: AuthStep, cause: CardStatusError | ProtocolError) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"SSSE authentication failed at {step.value}: {cause}")


class CardNotGenuine(SsseAuthenticationFailed):
    """The card's side did not verify: its answer failed the PSAM's check, it refused the
    PSAM's cryptogram, or some answer was malformed. A terminal refuses the card as not genuine."""


class PsamCannotAuthenticate(SsseAuthenticationFailed):
    """The PSAM refused a step with a status of `PSAM_CANNOT_AUTHENTICATE_SW`: it does not know the
    command, key or algorithm. Nothing was learnt about the card; the terminal lacks the means.

    `readable` holds the items a caller had read before authentication (by item name), so that
    a terminal still identifies the card (token, region) in its record.
    """

    def __init__(
        self,
        step: AuthStep,
        cause: CardStatusError,
        readable: Mapping[str, ItemValue] | None = None,
    ) -> None:
        super().__init__(step, cause)
        self.status = cause
        self.readable: Mapping[str, ItemValue] = dict(readable or {})

    @property
    def sw(self) -> int:
        return self.status.sw

    @property
    def command(self) -> str:
        """The PSAM command refused, as named in the exchange (e.g. "PSAM VERIFY CARD")."""
        return self.status.command

    @property
    def explanation(self) -> str:
        return PSAM_CANNOT_AUTHENTICATE_SW.get(self.sw, "the PSAM refused the command")

    def with_readable(self, readable: Mapping[str, ItemValue]) -> PsamCannotAuthenticate:
        """The same refusal, carrying what the caller had read before it."""
        return PsamCannotAuthenticate(self.step, self.status, readable)

    def __str__(self) -> str:
        return f"SSSE authentication: {self.explanation} ({self.sw:04X} to {self.command})"


def authenticate(
    card: Transmit,
    psam: Transmit,
    card_identification_code: bytes,
    algorithm_id: int = 0x01,
    config: PsamSsseConfig | None = None,
) -> None:
    """Run internal then external authentication so that EF06 becomes readable.

    Raises `PsamCannotAuthenticate` when the PSAM cannot do its part, `CardNotGenuine` otherwise.

    The internal-authentication challenge is the card's 8-byte process factor followed by
    8 random bytes from the PSAM, so neither side alone chooses it.
    """
    cfg = config or PsamSsseConfig()
    step = AuthStep.PSAM_SELECT
    try:
        if cfg.select:
            command(psam, psam_select(cfg.aid), "PSAM SELECT SSSE keys")
        step = AuthStep.CARD_CHALLENGE
        factor = BLOCK8_LAYOUT.parse(command(card, get_challenge(8), "GET CHALLENGE")).block
        step = AuthStep.PSAM_CHALLENGE
        random = BLOCK8_LAYOUT.parse(command(psam, get_challenge(8), "PSAM GET CHALLENGE")).block
        challenge = factor + random
        step = AuthStep.INTERNAL_AUTHENTICATE
        answer = BLOCK16_LAYOUT.parse(command(card, internal_authenticate(challenge), "INTERNAL AUTHENTICATE")).block
        step = AuthStep.PSAM_VERIFY_CARD
        verify = VerifyCardRequest(card_identification_code, challenge, answer)
        command(psam, psam_verify_card(verify, algorithm_id), "PSAM VERIFY CARD")
        step = AuthStep.CARD_CHALLENGE_EXTERNAL
        card_challenge = BLOCK16_LAYOUT.parse(command(card, get_challenge(16), "GET CHALLENGE")).block
        step = AuthStep.PSAM_CRYPTOGRAM
        request = CryptogramRequest(card_identification_code, card_challenge)
        cryptogram = BLOCK16_LAYOUT.parse(
            command(psam, psam_external_cryptogram(request, algorithm_id, cfg.key_id), "PSAM CRYPTOGRAM")
        ).block
        step = AuthStep.EXTERNAL_AUTHENTICATE
        command(card, external_authenticate(cryptogram, cfg.key_id), "EXTERNAL AUTHENTICATE")
    except CardStatusError as exc:
        if step in PSAM_BEFORE_CARD_DATA or (step in PSAM_STEPS and exc.sw in PSAM_CANNOT_AUTHENTICATE_SW):
            raise PsamCannotAuthenticate(step, exc) from exc
        raise CardNotGenuine(step, exc) from exc
    except ProtocolError as exc:
        raise CardNotGenuine(step, exc) from exc
