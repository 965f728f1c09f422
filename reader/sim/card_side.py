"""The card side of every bridge (vpcd, nfcpy udp, PN532 simulator, in-process).

A bridge only moves bytes; what a card says lives behind this protocol, so one virtual
card serves every reader stack unchanged.
"""

from __future__ import annotations

from typing import Protocol


class CardSide(Protocol):
    """A card as its reader sees it: power, reset and APDUs."""

    def power_on(self) -> bytes:
        """Power the card up (a fresh activation) and return its ATR."""
        ...

    def power_off(self) -> None:
        """Cut power: volatile state is lost, uncommitted transactions are rolled back."""
        ...

    def atr(self) -> bytes:
        """The ATR, without changing state (readers probe it for presence)."""
        ...

    def transmit(self, apdu: bytes) -> bytes:
        """Answer one command APDU with response data followed by SW1 SW2."""
        ...
