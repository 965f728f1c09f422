"""What the card in a slot is, from its ATR alone: contact or contactless, and which technology.

A terminal must decide before the first APDU whether a card is worth talking to: a MIFARE
Classic transit token or a FeliCa card cannot run the social security application, and a
card in the contact slot of a pharmacy reader is not the same session as a tap.

PC/SC part 3 gives every contactless card an ATR built by the reader:

    3B 8n 80 01 <n historical bytes> TCK

TS = 3B, T0 = 8n (TD1 follows, n historical bytes), TD1 = 80 (T=0, TD2 follows), TD2 = 01
(T=1, nothing more). For an ISO 14443-4 card the historical bytes come from the card (ATS
historical bytes for type A; ATQB application data, protocol info and MBLI/CID for type B).
For a storage card (no ISO 14443-4), the reader fills them in:

    80 4F 0C  A0 00 00 03 06  SS  NN NN  00 00 00 00

a TLV with the PC/SC RID, the standard byte SS and the card name NN NN. Any other ATR shape is
a contact card (ISO 7816-3). Type A and type B cannot be told apart from the ATR reliably,
so this module does not guess.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import reduce
from operator import xor

from smartcard.ATR import ATR
from smartcard.Exceptions import SmartcardException

PCSC_RID = bytes.fromhex("A000000306")
STORAGE_PREFIX = bytes.fromhex("804F0C") + PCSC_RID
GET_UID = bytes.fromhex("FFCA000000")

# Standard byte SS of a storage card ATR (PC/SC part 3 supplement).
STANDARDS: dict[int, str] = {
    0x00: "no information",
    0x01: "ISO 14443 A part 1",
    0x02: "ISO 14443 A part 2",
    0x03: "ISO 14443 A part 3",
    0x05: "ISO 14443 B part 1",
    0x06: "ISO 14443 B part 2",
    0x07: "ISO 14443 B part 3",
    0x09: "ISO 15693 part 1",
    0x0A: "ISO 15693 part 2",
    0x0B: "ISO 15693 part 3",
    0x0C: "ISO 15693 part 4",
    0x0D: "contact I2C",
    0x0E: "contact extended I2C",
    0x0F: "contact 2WBP",
    0x10: "contact 3WBP",
    0x11: "FeliCa",
    0x40: "low frequency",
}

# Card names NN NN of a storage card ATR: the ones a transit or library terminal meets.
# Codes not listed are reported by number.
CARD_NAMES: dict[int, str] = {
    0x0001: "MIFARE Classic 1K",
    0x0002: "MIFARE Classic 4K",
    0x0003: "MIFARE Ultralight",
    0x0026: "MIFARE Mini",
    0x0036: "MIFARE Plus SL1 2K",
    0x0037: "MIFARE Plus SL1 4K",
    0x0038: "MIFARE Plus SL2 2K",
    0x0039: "MIFARE Plus SL2 4K",
    0x003A: "MIFARE Ultralight C",
    0x003B: "FeliCa",
}


class Interface(enum.Enum):
    """How the card is connected to the reader."""

    CONTACT = "contact"
    CONTACTLESS = "contactless"
    UNKNOWN = "unknown"


class Technology(enum.Enum):
    """What kind of conversation the card supports."""

    ISO14443_4 = "iso14443-4"  # contactless processor card: APDUs reach the card's applications
    STORAGE = "storage"  # contactless memory card: the reader answers pseudo-APDUs for it
    B_PRIME = "innovatron-b-prime"  # Calypso B' cards
    ISO7816 = "iso7816"  # contact card (a PSAM, or a card inserted in a contact slot)
    UNKNOWN = "unknown"  # malformed or truncated ATR


@dataclass(frozen=True)
class AtrInfo:
    """The classification of one ATR; `describe()` gives a one-line human summary."""

    atr: bytes
    interface: Interface
    technology: Technology
    historical: bytes = b""
    protocols: tuple[int, ...] = ()
    checksum_ok: bool | None = None
    standard: int | None = None
    card_name: int | None = None

    @property
    def contactless(self) -> bool:
        return self.interface is Interface.CONTACTLESS

    @property
    def runs_apdus(self) -> bool:
        """Whether the card itself answers ISO 7816-4 APDUs (processor card)."""
        return self.technology in (Technology.ISO14443_4, Technology.B_PRIME, Technology.ISO7816)

    @property
    def standard_text(self) -> str | None:
        if self.standard is None:
            return None
        return STANDARDS.get(self.standard, f"standard {self.standard:#04x}")

    @property
    def card_name_text(self) -> str | None:
        if self.card_name is None:
            return None
        return CARD_NAMES.get(self.card_name, f"card name {self.card_name:04X}")

    def describe(self) -> str:
        parts = [self.interface.value, self.technology.value]
        if self.card_name is not None:
            parts.append(f"{self.card_name_text} ({self.standard_text})")
        return " ".join(parts)


def _parse(atr: bytes) -> ATR | None:
    """pyscard's ATR parser, refusing what it would silently truncate."""
    try:
        parsed = ATR(list(atr))
    except (SmartcardException, IndexError):
        return None
    if len(parsed.historicalBytes) != parsed.K:
        return None
    return parsed


def _protocols(parsed: ATR) -> tuple[int, ...]:
    offered = [td & 0x0F for td in parsed.TD if td is not None]
    return tuple(dict.fromkeys(offered)) if offered else (0,)


def classify_atr(atr: bytes) -> AtrInfo:
    """Classify an ATR; never raises (a malformed ATR is `Technology.UNKNOWN`)."""
    parsed = _parse(atr)
    if parsed is None:
        return AtrInfo(atr=atr, interface=Interface.UNKNOWN, technology=Technology.UNKNOWN)
    historical = bytes(parsed.historicalBytes)
    protocols = _protocols(parsed)
    checksum_ok: bool | None = None
    if parsed.hasChecksum:
        checksum_ok = reduce(xor, atr[1:], 0) == 0
    elif protocols != (0,):
        # T=1 (and anything but T=0 alone) requires TCK: the ATR was cut short.
        return AtrInfo(atr=atr, interface=Interface.UNKNOWN, technology=Technology.UNKNOWN)

    contactless = (
        len(atr) >= 4
        and atr[0] == 0x3B
        and atr[1] & 0xF0 == 0x80
        and atr[2] == 0x80
        and atr[3] == 0x01
        and parsed.hasChecksum
        and len(atr) == 4 + parsed.K + 1
    )
    contact = AtrInfo(
        atr=atr,
        interface=Interface.CONTACT,
        technology=Technology.ISO7816,
        historical=historical,
        protocols=protocols,
        checksum_ok=checksum_ok,
    )
    if not contactless:
        return contact
    if len(historical) == 15 and historical.startswith(STORAGE_PREFIX):
        return replace(
            contact,
            interface=Interface.CONTACTLESS,
            technology=Technology.STORAGE,
            standard=historical[8],
            card_name=int.from_bytes(historical[9:11], "big"),
        )
    if historical.startswith((b"\x5a\x0a", b"\x80\x5a\x0a")):
        return replace(contact, interface=Interface.CONTACTLESS, technology=Technology.B_PRIME)
    return replace(contact, interface=Interface.CONTACTLESS, technology=Technology.ISO14443_4)


def read_uid(transmit: Callable[[bytes], bytes]) -> bytes | None:
    """The anticollision UID (type A), PUPI (type B) or IDm (FeliCa) through `FF CA 00 00 00`.

    The command is the PC/SC part 3 GET DATA pseudo-APDU: a contactless reader answers it
    itself. Readers without it, and cards behind a reader that passes it through, answer with
    an error status (6A81, 6D00, 6E00...), and the UID is then unknown (None). Reader errors
    (CardRemoved, TransmitTimeout) propagate: the card is gone either way.
    """
    response = transmit(GET_UID)
    if len(response) >= 2 and response[-2] == 0x6C:
        response = transmit(GET_UID[:4] + response[-1:])
    if len(response) > 2 and response[-2:] == b"\x90\x00":
        return bytes(response[:-2])
    return None
