"""The reader interface every backend implements, in the spirit of Keyple's reader SPI.

It is deliberately tiny: wait for a card, talk to it with a deadline, wait for it to leave.
Everything else (state machine, retries, logging) lives once in the driver loop, so that a
new backend is a few blocking calls and nothing more.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from protocols.errors import TransportError


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


class CardRemoved(ReaderError, TransportError):
    """The card left the field or lost power during an exchange."""


class TransmitTimeout(ReaderError, TransportError):
    """The card did not answer within the deadline; the exchange was abandoned."""


class WaitCancelled(ReaderError):
    """A wait was cancelled from another thread (shutdown)."""


class CancelEvent(threading.Event):
    """A `threading.Event` that also wakes whoever is blocked in a native call when it is set.

    Every wait takes a plain `threading.Event`; a backend blocked in C (SCardGetStatusChange,
    a USB read) would notice it only at its next time slice. When the event is a CancelEvent,
    the backend registers a wake-up (SCardCancel, closing a socket) through `cancel_hook`, so
    a shutdown takes effect at once instead of after a slice.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wakers: dict[int, Callable[[], None]] = {}
        self._wakers_lock = threading.Lock()
        self._next_key = 0

    def set(self) -> None:
        super().set()
        with self._wakers_lock:
            wakers = list(self._wakers.values())
        for wake in wakers:
            wake()

    def _add(self, wake: Callable[[], None]) -> int:
        with self._wakers_lock:
            self._next_key += 1
            self._wakers[self._next_key] = wake
            return self._next_key

    def _discard(self, key: int) -> None:
        with self._wakers_lock:
            self._wakers.pop(key, None)


@contextlib.contextmanager
def cancel_hook(cancel: threading.Event, wake: Callable[[], None]) -> Iterator[None]:
    """Run `wake` if `cancel` is set while the block runs (only a CancelEvent can tell us).

    With a plain Event this does nothing, and the backend relies on its time slices.
    """
    if not isinstance(cancel, CancelEvent):
        yield
        return
    key = cancel._add(wake)
    try:
        yield
    finally:
        cancel._discard(key)


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
        """Send one command APDU, return data + SW1 SW2; raise CardRemoved or TransmitTimeout.

        `timeout=None` means the channel's own default deadline, never "wait forever".
        """
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
        """Block until a card is present and return an open channel; None on timeout.

        Raises WaitCancelled when `cancel` is set, ReaderUnavailable when the reader or its
        service is gone (the next call tries again: backoff is the caller's, see loop.py).
        """
        ...

    def wait_for_removal(self, timeout: float | None, cancel: threading.Event) -> bool:
        """Block until the card last returned by wait_for_card has left; False on timeout.

        True as well when that card was swapped for another one in the meantime.
        """
        ...

    def close(self) -> None:
        """Release every resource; a closed reader is not reused."""
        ...


class CardSide(Protocol):
    """A card as its reader sees it: power, reset and APDUs.

    What every bridge to a reader stack serves (vpcd, nfcpy udp, a PN532 on a pty, the
    in-process reader): a bridge only moves bytes, so one card serves every stack unchanged.
    """

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
