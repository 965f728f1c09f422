"""The reader interface every backend implements, in the spirit of Keyple's reader SPI.

It is deliberately tiny: wait for a card, talk to it with a deadline, wait for it to leave.
Everything else (state machine, retries, logging) lives once in the driver loop, so that a
new backend is a few blocking calls and nothing more.
"""

from __future__ import annotations

import enum
import threading
from typing import Protocol


class ReaderKind(enum.Enum):
    """What sits in the slot: a card held by a person, or the terminal's PSAM."""

    CONTACTLESS = "contactless"
    SAM = "sam"


class ReaderError(Exception):
    """Base of every failure a backend reports."""

    def __init__(self, reader: str, message: str) -> None:
        super().__init__(f"{reader}: {message}")
        self.reader = reader


class ReaderUnavailable(ReaderError):
    """The reader or its service is gone (unplugged, pcscd down, USB device busy)."""


class CardRemoved(ReaderError):
    """The card left the field or lost power during an exchange."""


class TransmitTimeout(ReaderError):
    """The card did not answer within the deadline; the exchange was abandoned."""


class WaitCancelled(ReaderError):
    """A wait was cancelled from another thread (shutdown)."""


class CardChannel(Protocol):
    """An open channel to one card presented to one reader."""

    @property
    def atr(self) -> bytes:
        """Answer to reset (for contactless cards, the PC/SC part 3 ATR or its equivalent)."""
        ...

    @property
    def uid(self) -> bytes | None:
        """Anticollision UID where the reader reports it."""
        ...

    def transmit(self, apdu: bytes, timeout: float | None = None) -> bytes:
        """Send one command APDU, return data + SW1 SW2; raise CardRemoved or TransmitTimeout."""
        ...

    def close(self) -> None:
        """Release the channel (the card may still be in the field)."""
        ...


class Reader(Protocol):
    """One slot of one reader."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> ReaderKind: ...

    def wait_for_card(self, timeout: float | None, cancel: threading.Event) -> CardChannel | None:
        """Block until a card is present and return an open channel; None on timeout."""
        ...

    def wait_for_removal(self, timeout: float | None, cancel: threading.Event) -> bool:
        """Block until the card has left; False on timeout."""
        ...

    def close(self) -> None:
        """Release every resource; a closed reader is not reused."""
        ...
