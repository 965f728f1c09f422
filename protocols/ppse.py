"""PPSE (2PAY.SYS.DDF01): the contactless directory of the applications a card offers."""

from __future__ import annotations

from protocols.apdu import CommandApdu
from protocols.exchange import Transmit, exchange
from protocols.fci import DirectoryEntry, parse_fci
from protocols.status import APPLICATION_UNUSABLE, raise_for_status

PPSE_NAME = b"2PAY.SYS.DDF01"


def select_ppse() -> CommandApdu:
    return CommandApdu(0x00, 0xA4, 0x04, 0x00, PPSE_NAME, 256)


def read_ppse(transmit: Transmit) -> tuple[DirectoryEntry, ...]:
    """The directory entries, highest priority first; empty when the card has no PPSE."""
    response = exchange(transmit, select_ppse())
    if response.sw in APPLICATION_UNUSABLE:
        return ()
    raise_for_status(response.sw, "SELECT PPSE")
    entries = parse_fci(response.data, "PPSE FCI").directory
    return tuple(sorted(entries, key=lambda e: (e.priority or 0x0F) & 0x0F))
