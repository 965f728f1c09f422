"""The virtual third-generation social security card: one chip, four applications, real state.

`VirtualCard` implements `CardSide`, so every bridge (vpcd, nfcpy udp, in process) carries
it unchanged. Build one from a profile:

    card = VirtualCard.from_profile("sichuan")                  # bundled name or a path
    card = VirtualCard.from_profile("sichuan", state_path=p)    # balance, ATC, logs kept in p

The chip holds the PPSE, the SSSE, the T-Union e-purse and the UnionPay e-cash application
(the last two when the profile has them). Commands go to the selected application; SELECT,
GET CHALLENGE and GET RESPONSE are the chip's own. Power off (or a reset) loses the volatile
state: the selection, the EF06 security status, a pending purchase and its CAPP cache, an
unfetched 61xx answer. The memory (`CardMemory`) survives.

The PC/SC pseudo-command GET DATA UID (FF CA 00 00) is answered with the profile's UID: on
a real contactless reader the reader answers it, and vpcd has no reader to do so; the nfcpy
bridge gets the same UID for its anticollision.

Selecting the SSSE without Le answers 61xx and leaves the FCI for GET RESPONSE, as
contactless SSSE cards do (cards.md §1.1); the SSSE is selected either way.

For tearing tests the card accepts `tear_at`: names of points inside commands where power
fails (`debit:before_commit`, `debit:after_commit`); the command then raises `CardTorn` and
the card is left powered off, exactly as if it had left the field at that instant.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from protocols.apdu import CommandApdu
from protocols.fci import DirectoryEntry
from protocols.tunion import PPSE_LABEL, TRANSACTION_RECORD_LAYOUT
from reader.log import get_logger
from sscard_sim.cos import Application, CardTorn, Chip, MoreData, Refusal, exact_le
from sscard_sim.ecash_app import EcashApp, Ppse
from sscard_sim.profile import CardProfile, load_card_profile
from sscard_sim.ssse_app import SsseApp
from sscard_sim.state import CardMemory, MemoryStore
from sscard_sim.tunion_app import TUnionApp, blank_capp_record

_log = get_logger(component="virtual-card")

CHALLENGE_LENGTHS = (4, 8, 16)


def initial_memory(profile: CardProfile) -> CardMemory:
    """The card's memory as it leaves personalisation."""
    tunion = profile.tunion
    return CardMemory(
        balance=tunion.balance if tunion else 0,
        offline_atc=tunion.offline_atc if tunion else 0,
        transactions=tuple(TRANSACTION_RECORD_LAYOUT.build(r) for r in tunion.transactions) if tunion else (),
        capp_records=tuple(blank_capp_record(i) for i in tunion.capp_record_ids) if tunion else (),
        external_auth_tries=profile.external_auth_tries,
        ecash_balance=profile.ecash.balance if profile.ecash else 0,
        ecash_atc=profile.ecash.atc if profile.ecash else 0,
        locked=tunion.locked if tunion else False,
    )


class VirtualCard(Chip):
    """A third-generation social security card personalised from a `CardProfile`."""

    def __init__(
        self,
        profile: CardProfile,
        store: MemoryStore | None = None,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.profile = profile
        self.store = store if store is not None else MemoryStore(initial_memory(profile))
        self.random = random
        self.tear_at: set[str] = set()
        self.powered = False
        self.current: Application | None = None
        self._challenge: bytes | None = None
        self._pending_response = b""
        self.ssse = SsseApp(
            profile.ssse,
            profile.ssse_keys,
            self.store,
            self._take_challenge,
            profile.external_auth_tries,
            profile.verifies_terminal,
        )
        self.tunion = (
            TUnionApp(profile.tunion, self.store, random, profile.verifies_terminal, self._tear)
            if profile.tunion
            else None
        )
        self.ecash = EcashApp(profile.ecash, self.store) if profile.ecash else None
        self.ppse = Ppse(self._directory)
        self.applications: list[Application] = [self.ppse, self.ssse]
        if self.tunion is not None:
            self.applications.append(self.tunion)
        if self.ecash is not None:
            self.applications.append(self.ecash)

    @classmethod
    def from_profile(
        cls,
        name_or_path: str | Path,
        state_path: Path | None = None,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> VirtualCard:
        """A card from a bundled profile name or a profile file, optionally with a state file."""
        profile = load_card_profile(name_or_path)
        return cls(profile, MemoryStore.open(initial_memory(profile), state_path), random)

    @property
    def memory(self) -> CardMemory:
        return self.store.memory

    # --- Chip ---------------------------------------------------------------------------------

    @property
    def chip_atr(self) -> bytes:
        return self.profile.atr

    def _answer(self, command: CommandApdu) -> bytes:
        try:
            return self._dispatch(command)
        except CardTorn:
            _log.info("card_torn", profile=self.profile.name, ins=f"{command.ins:02X}")
            self.power_off()
            raise

    # --- the chip's own commands ----------------------------------------------------------------

    def _dispatch(self, command: CommandApdu) -> bytes:
        key = (command.cla, command.ins)
        if key == (0x00, 0xA4) and command.p1 == 0x04:
            return self._select_by_name(command)
        if key == (0x00, 0xA4) and command.p1 == 0x00 and command.data in (b"", b"\x3f\x00"):
            self._deselect()
            return b""
        if key == (0x00, 0x84):
            return self._get_challenge(command)
        if key == (0xFF, 0xCA):
            return self._get_uid(command)
        if self.current is None:
            raise Refusal(0x6A82 if key == (0x00, 0xA4) else 0x6985)
        return self.current.handle(command)

    def _select_by_name(self, command: CommandApdu) -> bytes:
        if not command.data:
            raise Refusal(0x6A86)
        matches = [app for app in self.applications if app.aid.startswith(command.data)]
        occurrence = command.p2 & 0x03
        if occurrence == 0x02 and self.current in matches:
            matches = matches[matches.index(self.current) + 1 :]
        elif occurrence not in (0x00, 0x02):
            raise Refusal(0x6A86)
        if not matches:
            raise Refusal(0x6A82)
        target = matches[0]
        self._deselect()
        fci = target.select()
        self.current = target
        if target is self.ssse and self.ssse.answers_select_with_61 and command.le is None:
            self._pending_response = fci
            raise MoreData(b"", len(fci))
        return fci

    def _get_response(self, command: CommandApdu, pending: bytes) -> bytes:
        if not pending:
            raise Refusal(0x6985)
        wanted = len(pending) if command.le is None or command.le == 256 else command.le
        if wanted > len(pending):
            self._pending_response = pending
            raise Refusal(0x6C00 | len(pending))
        data, rest = pending[:wanted], pending[wanted:]
        if rest:
            self._pending_response = rest
            raise MoreData(data, len(rest))
        return data

    def _get_challenge(self, command: CommandApdu) -> bytes:
        if command.p1 or command.p2 or command.data:
            raise Refusal(0x6A86)
        if command.le not in CHALLENGE_LENGTHS:
            raise Refusal(0x6700)
        self._challenge = self.random(command.le)
        return self._challenge

    def _get_uid(self, command: CommandApdu) -> bytes:
        """PC/SC GET DATA (FF CA 00 00): the reader's answer, given here since vpcd has no reader."""
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise Refusal(0x6A81)
        return exact_le(self.profile.uid, command)

    def _take_challenge(self) -> bytes | None:
        challenge, self._challenge = self._challenge, None
        return challenge

    def _directory(self) -> tuple[DirectoryEntry, ...]:
        entries = []
        if self.tunion is not None:
            entries.append(DirectoryEntry.create(self.tunion.aid, PPSE_LABEL, 1))
        if self.ecash is not None:
            entries.append(DirectoryEntry.create(self.ecash.aid, self.ecash.profile.label, 2))
        return tuple(entries)

    def _tear(self, point: str) -> None:
        if point in self.tear_at:
            raise CardTorn(f"power lost at {point}")

    def _deselect(self) -> None:
        if self.current is not None:
            self.current.deselect()
        self.current = None

    def _lose_volatile_state(self) -> None:
        self._deselect()
        self._challenge = None
        self._pending_response = b""
