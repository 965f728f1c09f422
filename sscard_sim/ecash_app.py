"""The UnionPay e-cash application and the PPSE directory of the virtual card.

The e-cash application answers what a display-only terminal asks (cards.md §3.3): GET DATA
for the balance and its limits, and READ RECORD of the first record of SFI 1 with the PAN and
dates. It does not run qPBOC: GET PROCESSING OPTIONS is refused (6D00), since a terminal
showing a balance must not send it (each GPO spends an ATC) and no project flow pays with it.

The PPSE (2PAY.SYS.DDF01) lists the payment applications the card carries, each with its
label: MOT_T_EP for the T-Union e-purse, as T-Union readers require. The SSSE is not an EMV
payment application and is not listed (it is selected by its own DF name).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from protocols.apdu import CommandApdu
from protocols.codecs import encode_bcd
from protocols.ecash import (
    TAG_BALANCE,
    TAG_BALANCE_LIMIT,
    TAG_OFFLINE_AVAILABLE,
    TAG_RESET_THRESHOLD,
    TAG_SINGLE_LIMIT,
    build_amount,
)
from protocols.fci import DirectoryEntry, Fci
from protocols.ppse import PPSE_NAME
from protocols.tlv import Tlv, build_tlvs
from sscard_sim.cos import Refusal, exact_le
from sscard_sim.profile import EcashProfile
from sscard_sim.state import MemoryStore

ECASH_SFI = 0x01
PDOL = bytes.fromhex("9F66049F02069F03069F1A0295055F2A029A039C019F3704")
"""The PDOL a qPBOC card announces (TTQ, amounts, country, TVR, currency, date, type, UN)."""


def _yymmdd(day: dt.date) -> bytes:
    return encode_bcd(day.strftime("%y%m%d"), 3)


class EcashApp:
    """The UnionPay e-cash ADF (A0 00 00 03 33 01 01 06 by default)."""

    name = "UnionPay e-cash"

    def __init__(self, profile: EcashProfile, store: MemoryStore) -> None:
        self.profile = profile
        self.aid = profile.aid
        self.store = store

    def select(self) -> bytes:
        log_entry = Tlv.of(0xBF0C, Tlv(0x9F4D, bytes((0x0B, 0x0A))))
        fci = Fci.create(
            self.aid,
            label=self.profile.label,
            priority=2,
            extra=(Tlv(0x9F38, PDOL), Tlv(0x5F2D, b"zhen"), log_entry),
        )
        return fci.to_bytes()

    def deselect(self) -> None:
        return None

    def _data_object(self, tag: int) -> bytes:
        """The GET DATA answer for `tag` (tag, length, value), or 6A88 for a tag it does not hold."""
        memory = self.store.memory
        profile = self.profile
        amounts = {
            TAG_BALANCE: memory.ecash_balance,
            TAG_OFFLINE_AVAILABLE: memory.ecash_balance,
            TAG_SINGLE_LIMIT: profile.single_limit,
            TAG_BALANCE_LIMIT: profile.balance_limit,
            TAG_RESET_THRESHOLD: profile.reset_threshold,
        }
        if tag in amounts:
            return build_amount(tag, amounts[tag])
        others = {
            0x9F36: memory.ecash_atc.to_bytes(2, "big"),
            0x9F13: profile.last_online_atc.to_bytes(2, "big"),
            0x9F51: bytes.fromhex("0156"),
        }
        if tag not in others:
            raise Refusal(0x6A88)
        return Tlv(tag, others[tag]).to_bytes()

    def _record(self) -> bytes:
        profile = self.profile
        pan_digits = profile.pan + ("F" if len(profile.pan) % 2 else "")
        track2 = f"{profile.pan}D{profile.expiry_date:%y%m}2200000000000"
        track2 += "F" * (len(track2) % 2)
        return Tlv(
            0x70,
            build_tlvs(
                (
                    Tlv(0x57, bytes.fromhex(track2)),
                    Tlv(0x5A, bytes.fromhex(pan_digits)),
                    Tlv(0x5F24, _yymmdd(profile.expiry_date)),
                    Tlv(0x5F25, _yymmdd(profile.effective_date)),
                    Tlv(0x5F34, bytes((profile.pan_sequence,))),
                )
            ),
        ).to_bytes()

    def handle(self, command: CommandApdu) -> bytes:
        key = (command.cla, command.ins)
        if key == (0x80, 0xCA):
            return exact_le(self._data_object((command.p1 << 8) | command.p2), command)
        if key == (0x00, 0xB2):
            if command.p2 & 0x07 != 0x04 or command.p2 >> 3 != ECASH_SFI:
                raise Refusal(0x6A82)
            if command.p1 != 1:
                raise Refusal(0x6A83)
            return exact_le(self._record(), command)
        raise Refusal(0x6D00 if command.cla in (0x00, 0x80) else 0x6E00)


class Ppse:
    """The proximity payment system environment: a directory of the payment applications."""

    name = "PPSE"

    def __init__(self, entries: Callable[[], tuple[DirectoryEntry, ...]]) -> None:
        self.aid = PPSE_NAME
        self.entries = entries

    def select(self) -> bytes:
        return Fci.create(self.aid, directory=self.entries()).to_bytes()

    def deselect(self) -> None:
        return None

    def handle(self, command: CommandApdu) -> bytes:
        raise Refusal(0x6A82 if command.ins == 0xB2 else 0x6D00)
