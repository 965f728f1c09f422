"""ISO 7816-4 status words: what each one means for these cards, and a typed error per family.

A status word other than 9000 is the card refusing, not the data being malformed, so these
errors form their own family (`CardStatusError`) beside `ProtocolError`. Callers branch on
the class: a gate skips an application that is `FileNotFound`, rejects a card that is
`ApplicationLocked`, offers a top-up on `InsufficientBalance`. Meanings follow the table of
the card reference (ISO 7816-4, EMV, the Chinese COS tables seen in reader code).
"""

from __future__ import annotations

from dataclasses import dataclass

SW_OK = 0x9000

APPLICATION_ABSENT = frozenset({0x6A82})
"""SELECT of an application the card does not carry."""
APPLICATION_UNUSABLE = frozenset({0x6A82, 0x6A81, 0x6283})
"""SELECT of an application that is absent or blocked: a reader skips it (a validator tells them apart)."""
RECORD_ABSENT = frozenset({0x6A82, 0x6A83})
"""READ RECORD past the last record, or of a file the card does not have: the normal end of a loop."""
FILE_ABSENT = frozenset({0x6A82, 0x6A83, 0x6982, 0x6A86})
"""An optional file that is missing or closed to this reader: read as absent, not as a failure."""
DATA_ABSENT = frozenset({0x6A88, 0x6A81, 0x6A83, 0x6985, 0x6D00, 0x6A86})
"""GET DATA of an object the application does not hold."""


class CardStatusError(Exception):
    """The card (or PSAM) answered a command with a status word that is not success."""

    def __init__(self, sw: int, command: str, meaning: str | None = None) -> None:
        self.sw = sw
        self.command = command
        self.meaning = meaning if meaning is not None else describe(sw).meaning
        super().__init__(str(self))

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    def __str__(self) -> str:
        return f"{self.command}: SW {self.sw:04X} ({self.meaning})"

    def __reduce__(self) -> tuple[type[CardStatusError], tuple[int, str, str]]:
        return (type(self), (self.sw, self.command, self.meaning))


class WarningStatus(CardStatusError):
    """62xx/63xx warnings that the caller asked to treat as failures."""


class FileNotFound(CardStatusError):
    """6A82: file or application absent; try the next AID or profile."""


class RecordNotFound(CardStatusError):
    """6A83: no such record (the normal end of a record loop)."""


class ApplicationBlocked(CardStatusError):
    """6283 (selected file invalidated) or 6A81 (function not supported / card blocked)."""


class ApplicationLocked(CardStatusError):
    """9303: application permanently locked (blacklisted); reject the card."""


class SecurityStatusNotSatisfied(CardStatusError):
    """6982: access condition not met (EF06 of a 3.00 card before authentication, PIN not verified)."""


class AuthenticationBlocked(CardStatusError):
    """6983: the authentication method (PIN or key) is blocked."""


class AuthenticationFailed(CardStatusError):
    """63Cx: PIN or authentication failed; `tries_left` = x."""

    @property
    def tries_left(self) -> int:
        return self.sw & 0x0F


class ConditionsNotSatisfied(CardStatusError):
    """6985: conditions of use not satisfied (application locked or not selected, balance overflow)."""


class SecureMessagingError(CardStatusError):
    """6988: secure-messaging data object or MAC incorrect."""


class MacInvalid(CardStatusError):
    """9302: MAC invalid (on DEBIT FOR PURCHASE: the PSAM's MAC1 was rejected)."""


class InsufficientBalance(CardStatusError):
    """9401: the purse holds less than the amount; reject or offer a top-up."""


class CounterExhausted(CardStatusError):
    """9402: the transaction counter reached its maximum."""


class KeyNotSupported(CardStatusError):
    """9403: key index or key version not supported (PSAM: purchase not supported)."""


class MacTacUnavailable(CardStatusError):
    """9406: required MAC/TAC not available (GET TRANSACTION PROOF of an uncommitted debit)."""


class WrongLength(CardStatusError):
    """6700 / 6Cxx left unhandled: the length in the command is wrong."""


class WrongParameters(CardStatusError):
    """6A86 / 6B00 / 6A80 / 6A84 / 6A87 / 6A88: parameters or data not accepted."""


class CommandNotAllowed(CardStatusError):
    """6986 / 6981 / 6984 and other 69xx: command not allowed in the current state."""


class InstructionNotSupported(CardStatusError):
    """6D00: instruction not supported by the selected application."""


class ClassNotSupported(CardStatusError):
    """6E00: class byte not supported."""


class CardLeftField(CardStatusError):
    """6E81: some reader libraries report a card that left the field with this status."""


class MemoryFailure(CardStatusError):
    """6581 / 64xx / 65xx: the card could not write its memory; the state is unknown."""


class UnknownStatus(CardStatusError):
    """A status word outside every family this project knows."""


@dataclass(frozen=True)
class StatusInfo:
    """A status word, its meaning, and the error class raised for it."""

    sw: int
    meaning: str
    error: type[CardStatusError] | None

    @property
    def ok(self) -> bool:
        return self.error is None


_EXACT: dict[int, tuple[str, type[CardStatusError] | None]] = {
    0x9000: ("success", None),
    0x6283: ("selected file invalidated: application blocked", ApplicationBlocked),
    0x6300: ("verification failed", AuthenticationFailed),
    0x6281: ("part of returned data may be corrupted", WarningStatus),
    0x6282: ("end of file or record reached before Le bytes", WarningStatus),
    0x6581: ("memory failure", MemoryFailure),
    0x6700: ("wrong length", WrongLength),
    0x6981: ("command incompatible with file structure", CommandNotAllowed),
    0x6982: ("security status not satisfied", SecurityStatusNotSatisfied),
    0x6983: ("authentication method blocked", AuthenticationBlocked),
    0x6984: ("referenced data invalidated", CommandNotAllowed),
    0x6985: ("conditions of use not satisfied", ConditionsNotSatisfied),
    0x6986: ("command not allowed (no current EF)", CommandNotAllowed),
    0x6988: ("secure messaging data incorrect", SecureMessagingError),
    0x6A80: ("incorrect parameters in the data field", WrongParameters),
    0x6A81: ("function not supported: card or application blocked", ApplicationBlocked),
    0x6A82: ("file or application not found", FileNotFound),
    0x6A83: ("record not found", RecordNotFound),
    0x6A84: ("not enough memory space in the file", WrongParameters),
    0x6A86: ("incorrect parameters P1-P2", WrongParameters),
    0x6A87: ("Lc inconsistent with P1-P2", WrongParameters),
    0x6A88: ("referenced data not found", WrongParameters),
    0x6B00: ("wrong parameters P1-P2", WrongParameters),
    0x6D00: ("instruction not supported", InstructionNotSupported),
    0x6E00: ("class not supported", ClassNotSupported),
    0x6E81: ("card left the field (reader-library status)", CardLeftField),
    0x6F00: ("no precise diagnosis", UnknownStatus),
    0x9302: ("MAC invalid", MacInvalid),
    0x9303: ("application permanently locked", ApplicationLocked),
    0x9401: ("insufficient balance", InsufficientBalance),
    0x9402: ("transaction counter at maximum", CounterExhausted),
    0x9403: ("key index or version not supported", KeyNotSupported),
    0x9406: ("required MAC or TAC not available", MacTacUnavailable),
}


def describe(sw: int) -> StatusInfo:
    """Meaning and error class of `sw`; every value 0000..FFFF gets an answer."""
    if not 0 <= sw <= 0xFFFF:
        raise ValueError(f"status word out of range: {sw:#x}")
    exact = _EXACT.get(sw)
    if exact is not None:
        return StatusInfo(sw, exact[0], exact[1])
    sw1, sw2 = sw >> 8, sw & 0xFF
    if sw1 == 0x61:
        return StatusInfo(sw, f"{sw2 or 256} response bytes still available", WarningStatus)
    if sw1 == 0x6C:
        return StatusInfo(sw, f"wrong Le: exact length is {sw2 or 256}", WrongLength)
    if sw1 == 0x63 and sw2 & 0xF0 == 0xC0:
        return StatusInfo(sw, f"authentication failed, {sw2 & 0x0F} tries left", AuthenticationFailed)
    if sw1 in (0x62, 0x63):
        return StatusInfo(sw, "warning, state of non-volatile memory may have changed", WarningStatus)
    if sw1 in (0x64, 0x65):
        return StatusInfo(sw, "execution error", MemoryFailure)
    if sw1 == 0x69:
        return StatusInfo(sw, "command not allowed", CommandNotAllowed)
    if sw1 == 0x6A:
        return StatusInfo(sw, "wrong parameters", WrongParameters)
    return StatusInfo(sw, "unknown status", UnknownStatus)


def raise_for_status(sw: int, command: str) -> None:
    """Raise the typed `CardStatusError` for `sw` unless it is 9000; `command` names the step."""
    info = describe(sw)
    if info.error is not None:
        raise info.error(sw, command, info.meaning)


DEBIT_REFUSALS: tuple[type[CardStatusError], ...] = (
    MacInvalid,
    InsufficientBalance,
    ConditionsNotSatisfied,
    WrongLength,
    WrongParameters,
    InstructionNotSupported,
    ClassNotSupported,
    KeyNotSupported,
    CounterExhausted,
    ApplicationLocked,
    ApplicationBlocked,
)
"""Answers to DEBIT FOR (CAPP) PURCHASE that prove the card did not debit.

Each is the card refusing the command before it touches the purse: 9302 its check of MAC1
failed (the PSAM is not one its issuer keyed: a clone, or the wrong key set), 9401 the
balance, 6985 no purchase initialised, 6700/6Axx/6Dxx/6Exx the command itself, 9402/9403
the counter or key, 9303/6283/6A81 the application. Anything else (6581 memory failure,
6F00, an unknown word, a malformed answer, no answer) leaves the debit possibly committed.
"""
