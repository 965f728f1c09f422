"""The virtual PSAM: the terminal's secure module for T-Union purchases and SSSE authentication.

`VirtualPsam` implements `CardSide` (it sits in the second vpcd slot as a contact card):

    psam = VirtualPsam.from_profile("demo-psam")        # bundled name or a path

What it holds, and the commands it answers:
- MF: file 0x15 (PSAM serial, 10 bytes) and file 0x16 (terminal number, 6 bytes), read with
  READ BINARY by SFI (00 B0 96 00 06).
- Purchase application, selected by file identifier (8011 by default, from the profile):
  MAC1 (80 70: terminal sequence number and MAC1 for the 36-byte input) and MAC2
  verification (80 72: 9000, or 9302 for a wrong MAC2). Its terminal transaction sequence
  counts every MAC1; with a state file it survives restarts.
- SSSE key application, selected by AID (D15600000590, `protocols.ssse_auth`): GET CHALLENGE,
  VERIFY CARD (80 F0: checks a card's INTERNAL AUTHENTICATE answer, 6300 if not genuine) and
  EXTERNAL CRYPTOGRAM (80 F2: the RKSSSE cryptogram for the card's challenge). These two
  commands are this project's convention (see `protocols.ssse_auth`). A profile whose
  `ssse_algorithms` is empty holds no SSSE keys and, like a PSAM of another scheme, does not
  know these two commands at all: it answers 6D00 (profile `foreign-psam`).

It holds master keys and diversifies per card, like a real PSAM; the cryptography is
`sscard_sim.crypto`. A real PSAM speaks T=0, where a command with data that returns data
answers 61xx and gives the data on GET RESPONSE; the profile's `t0_get_response` keeps that
behaviour (the default), so terminals exercise their 61xx handling against it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocols.apdu import CommandApdu
from protocols.errors import ProtocolError
from protocols.ssse import RKSSSE_KEY_ID
from protocols.ssse_auth import (
    CRYPTOGRAM_REQUEST_LAYOUT,
    DEFAULT_PSAM_SSSE_AID,
    INS_EXTERNAL_CRYPTOGRAM,
    INS_VERIFY_CARD,
    SW_CARD_NOT_GENUINE,
    VERIFY_CARD_LAYOUT,
)
from protocols.tunion import (
    MAC1_ANSWER_LAYOUT,
    MAC1_INPUT_LAYOUT,
    MAC2_REQUEST_LAYOUT,
    TERMINAL_NUMBER_LAYOUT,
    TRANSACTION_CAPP_PURCHASE,
    TRANSACTION_PURCHASE,
    Mac1Answer,
    TerminalNumber,
)
from reader.log import get_logger
from sscard_sim import crypto
from sscard_sim.cos import Chip, MoreData, Refusal, exact_le, window
from sscard_sim.keys import card_ssse_keys
from sscard_sim.profile import PsamProfile, load_psam_profile
from sscard_sim.state import StateFileError, write_atomically

_log = get_logger(component="virtual-psam")

SFI_PSAM_SERIAL = 0x15
SFI_TERMINAL_NUMBER = 0x16
CHALLENGE_LENGTHS = (4, 8, 16)
MAX_SEQUENCE = 0xFFFFFFFF


@dataclass
class _Mac2Check:
    session_key: bytes
    amount: int


class VirtualPsam(Chip):
    """A PSAM personalised from a `PsamProfile`."""

    def __init__(
        self,
        profile: PsamProfile,
        state_path: Path | None = None,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.profile = profile
        self.state_path = state_path
        self.random = random
        self.sequence = self._load_sequence(profile.sequence)
        self.powered = False
        self.selected: str | None = None
        self._pending_mac2: _Mac2Check | None = None
        self._pending_response = b""
        self._files = {
            SFI_PSAM_SERIAL: profile.serial,
            SFI_TERMINAL_NUMBER: TERMINAL_NUMBER_LAYOUT.build(TerminalNumber(profile.terminal_id)),
        }

    @classmethod
    def from_profile(cls, name_or_path: str | Path = "demo-psam", state_path: Path | None = None) -> VirtualPsam:
        return cls(load_psam_profile(name_or_path), state_path)

    # --- Chip ---------------------------------------------------------------------------------

    @property
    def chip_atr(self) -> bytes:
        return self.profile.atr

    def _answer(self, command: CommandApdu) -> bytes:
        return self._t0(command, self._dispatch(command))

    # --- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, command: CommandApdu) -> bytes:
        key = (command.cla, command.ins)
        if key == (0x00, 0xA4):
            return self._select(command)
        if key == (0x00, 0xB0):
            if not command.p1 & 0x80:
                raise Refusal(0x6986)
            content = self._files.get(command.p1 & 0x1F)
            if content is None:
                raise Refusal(0x6A82)
            return window(content, command.p2, command)
        if key == (0x00, 0x84):
            if command.le not in CHALLENGE_LENGTHS:
                raise Refusal(0x6700)
            return self.random(command.le)
        if key == (0x80, 0x70):
            return self._mac1(command)
        if key == (0x80, 0x72):
            return self._verify_mac2(command)
        if key in ((0x80, INS_VERIFY_CARD), (0x80, INS_EXTERNAL_CRYPTOGRAM)) and not self.profile.ssse_algorithms:
            raise Refusal(0x6D00)
        if key == (0x80, INS_VERIFY_CARD):
            return self._verify_card(command)
        if key == (0x80, INS_EXTERNAL_CRYPTOGRAM):
            return self._external_cryptogram(command)
        raise Refusal(0x6D00 if command.cla in (0x00, 0x80) else 0x6E00)

    def _t0(self, command: CommandApdu, data: bytes) -> bytes:
        """T=0: a command carrying data gets its answer through GET RESPONSE (61xx)."""
        if data and command.data and self.profile.t0_get_response:
            self._pending_response = data
            raise MoreData(b"", len(data))
        return data

    def _get_response(self, command: CommandApdu, pending: bytes) -> bytes:
        if not pending:
            raise Refusal(0x6F00)
        if command.le is not None and command.le != 256 and command.le != len(pending):
            self._pending_response = pending
            raise Refusal(0x6C00 | len(pending))
        return pending

    def _select(self, command: CommandApdu) -> bytes:
        self._pending_mac2 = None
        if command.p1 == 0x00 and command.data in (b"", b"\x3f\x00"):
            self.selected = None
            return b""
        if command.p1 == 0x00 and command.data == self.profile.purchase_df:
            self.selected = "purchase"
            return b""
        if command.p1 == 0x04 and command.data and DEFAULT_PSAM_SSSE_AID.startswith(command.data):
            self.selected = "ssse"
            return b""
        raise Refusal(0x6A82)

    def _require(self, application: str) -> None:
        if self.selected != application:
            raise Refusal(0x6985)

    # --- T-Union purchase ---------------------------------------------------------------------

    def _mac1(self, command: CommandApdu) -> bytes:
        self._require("purchase")
        self._pending_mac2 = None
        try:
            request = MAC1_INPUT_LAYOUT.parse(command.data)
        except ProtocolError:
            raise Refusal(0x6700) from None
        master = self.profile.masters.purchase_key(request.key_version)
        if master is None or master.algorithm != request.algorithm_id:
            raise Refusal(0x9403)
        if request.transaction_type not in (TRANSACTION_PURCHASE, TRANSACTION_CAPP_PURCHASE):
            raise Refusal(0x6A80)
        if self.sequence >= MAX_SEQUENCE:
            raise Refusal(0x9402)
        time_span = MAC1_INPUT_LAYOUT.span("time")
        stamp = command.data[time_span.offset : time_span.offset + time_span.size]
        dpk = crypto.diversify(master.mpk, request.card_serial)
        sequence = self.sequence
        session_key = crypto.purchase_session_key(dpk, request.card_random, request.offline_atc, sequence)
        purchase = crypto.PurchaseData(
            amount=request.amount,
            trans_type=request.transaction_type,
            terminal_id=self.profile.terminal_id,
            date=stamp[:4],
            time=stamp[4:],
        )
        self._store_sequence(sequence + 1)
        self._pending_mac2 = _Mac2Check(session_key, request.amount)
        answer = Mac1Answer(terminal_sequence=sequence, mac1=crypto.mac1(session_key, purchase))
        return exact_le(MAC1_ANSWER_LAYOUT.build(answer), command)

    def _verify_mac2(self, command: CommandApdu) -> bytes:
        self._require("purchase")
        check, self._pending_mac2 = self._pending_mac2, None
        if check is None:
            raise Refusal(0x6985)
        try:
            request = MAC2_REQUEST_LAYOUT.parse(command.data)
        except ProtocolError:
            raise Refusal(0x6700) from None
        if not crypto.macs_equal(crypto.mac2(check.session_key, check.amount), request.mac2):
            raise Refusal(0x9302)
        return b""

    # --- SSSE authentication ------------------------------------------------------------------

    def _check_ssse_algorithm(self, algorithm_id: int) -> None:
        self._require("ssse")
        if algorithm_id not in self.profile.ssse_algorithms:
            raise Refusal(0x6A86)

    def _verify_card(self, command: CommandApdu) -> bytes:
        self._check_ssse_algorithm(command.p1)
        try:
            request = VERIFY_CARD_LAYOUT.parse(command.data)
        except ProtocolError:
            raise Refusal(0x6700) from None
        keys = card_ssse_keys(self.profile.masters, request.card_identification_code)
        expected = crypto.internal_auth_response(keys.internal, request.challenge)
        if not crypto.macs_equal(expected, request.card_answer):
            raise Refusal(SW_CARD_NOT_GENUINE)
        return b""

    def _external_cryptogram(self, command: CommandApdu) -> bytes:
        self._check_ssse_algorithm(command.p1)
        if command.p2 != RKSSSE_KEY_ID:
            raise Refusal(0x6A88)
        try:
            request = CRYPTOGRAM_REQUEST_LAYOUT.parse(command.data)
        except ProtocolError:
            raise Refusal(0x6700) from None
        keys = card_ssse_keys(self.profile.masters, request.card_identification_code)
        return exact_le(crypto.external_auth_cryptogram(keys.external, request.card_challenge), command)

    # --- state --------------------------------------------------------------------------------

    def _lose_volatile_state(self) -> None:
        self.selected = None
        self._pending_mac2 = None
        self._pending_response = b""

    def _load_sequence(self, default: int) -> int:
        if self.state_path is None or not self.state_path.exists():
            return default
        try:
            return int(json.loads(self.state_path.read_text(encoding="utf-8"))["terminal_sequence"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StateFileError(f"cannot load PSAM state {self.state_path}: {error}") from error

    def _store_sequence(self, sequence: int) -> None:
        if self.state_path is not None:
            try:
                write_atomically(self.state_path, json.dumps({"terminal_sequence": sequence}))
            except OSError as error:
                raise StateFileError(f"cannot write PSAM state {self.state_path}: {error}") from error
        self.sequence = sequence
