"""A reader slot inside this process, driven by `insert(card)` and `remove()`.

It plays the part of Keyple's stub reader one level above vpcd: any CardSide (the same
virtual cards that sit behind vpcd, nfcpy udp or the PN532 simulator) can be presented to
the driver loop and to card code with no daemon, socket or thread of its own, so unit tests
and the demo run in milliseconds. It keeps the semantics of the real backends: a card
removed during an exchange gives CardRemoved, a card that does not answer gives
TransmitTimeout (the exchange runs on a watchdog worker), and `unplug()` makes every call
raise ReaderUnavailable until `plug()`, for recovery tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from reader.backends.atr import AtrInfo, classify_atr, read_uid
from reader.backends.base import (
    CardRemoved,
    CardSide,
    ReaderError,
    ReaderKind,
    ReaderUnavailable,
    TransmitTimeout,
    WaitCancelled,
    cancel_hook,
)
from reader.backends.watchdog import DeadlineExceeded, ExchangeWorker, WorkerAbandoned, WorkerClosed

T = TypeVar("T")


class InProcessChannel:
    """A session with the card currently in an InProcessReader."""

    def __init__(self, reader: InProcessReader, card: CardSide, generation: int, atr: bytes) -> None:
        self._reader = reader
        self._card = card
        self._generation = generation
        self._atr = atr
        self._closed = False
        self._dead: type[ReaderError] | None = None
        self._uid: bytes | None = None
        self._uid_read = False
        self.default_timeout = reader.transmit_timeout

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def info(self) -> AtrInfo:
        return classify_atr(self._atr)

    @property
    def uid(self) -> bytes | None:
        """As on PC/SC: `FF CA 00 00 00` on first use, answered here by the card itself."""
        if not self._uid_read:
            if self._reader.kind is ReaderKind.CONTACTLESS and self.info.contactless:
                self._uid = read_uid(self.transmit)
            self._uid_read = True
        return self._uid

    def transmit(self, apdu: bytes, timeout: float | None = None) -> bytes:
        name = self._reader.name
        if self._closed:
            raise ReaderError(name, "the channel is closed")
        if self._dead is not None:
            raise self._dead(name, "the channel failed earlier; wait for the next card")
        try:
            self._reader.check_session(self._generation)
            try:
                response = self._reader.exchange(
                    lambda: self._card.transmit(apdu), self.default_timeout if timeout is None else timeout
                )
            except TransmitTimeout:
                raise
            except ConnectionError as error:
                # A card-side emulator that loses power mid-command (a tear) raises ConnectionError,
                # as its bridges do when a connection drops: for the terminal the card has left.
                raise CardRemoved(name, f"the card lost power: {error}") from error
            except Exception:
                # A card emulator that fails because it left the field is a removal; otherwise a bug.
                self._reader.check_session(self._generation)
                raise
            # An answer that arrives after the card left was never received by the terminal.
            self._reader.check_session(self._generation)
        except (CardRemoved, TransmitTimeout, ReaderUnavailable) as error:
            self._dead = type(error)
            raise
        if not response:
            self._dead = CardRemoved
            raise CardRemoved(name, "empty response: the card stopped answering")
        return response

    def close(self) -> None:
        self._closed = True


class InProcessReader:
    """One slot; tests and the demo call `insert`, `remove`, `unplug` and `plug` from any thread."""

    def __init__(
        self,
        name: str = "inprocess",
        kind: ReaderKind = ReaderKind.CONTACTLESS,
        *,
        transmit_timeout: float = 2.0,
    ) -> None:
        self._name = name
        self._kind = kind
        self.transmit_timeout = transmit_timeout
        self._cond = threading.Condition()
        self._card: CardSide | None = None
        self._generation = 0
        self._taken: int | None = None
        self._unavailable: str | None = None
        self._closed = False
        self._worker: ExchangeWorker | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> ReaderKind:
        return self._kind

    # ----------------------------------------------------------------- driving the slot

    def insert(self, card: CardSide) -> None:
        """Present a card (a card already there is removed first)."""
        self.remove()
        with self._cond:
            self._card = card
            self._generation += 1
            self._cond.notify_all()

    def remove(self) -> None:
        """Take the card away: it loses power, and an exchange in flight fails."""
        with self._cond:
            card, self._card = self._card, None
            if card is None:
                return
            self._generation += 1
            self._cond.notify_all()
        card.power_off()

    def unplug(self, reason: str = "reader unplugged") -> None:
        """Every call raises ReaderUnavailable until `plug()`; the card is lost."""
        self.remove()
        with self._cond:
            self._unavailable = reason
            self._cond.notify_all()

    def plug(self) -> None:
        with self._cond:
            self._unavailable = None
            self._cond.notify_all()

    # ----------------------------------------------------------------- the Reader interface

    def wait_for_card(self, timeout: float | None, cancel: threading.Event) -> InProcessChannel | None:
        with cancel_hook(cancel, self._wake), self._cond:
            ready = self._cond.wait_for(
                lambda: self._closed or cancel.is_set() or self._unavailable or self._card is not None,
                timeout,
            )
            self._raise_if_stopped(cancel)
            if not ready or self._card is None:
                return None
            card, generation = self._card, self._generation
            self._taken = generation
        atr = self.exchange(card.power_on, self.transmit_timeout)
        return InProcessChannel(self, card, generation, atr)

    def wait_for_removal(self, timeout: float | None, cancel: threading.Event) -> bool:
        with cancel_hook(cancel, self._wake), self._cond:
            gone = self._cond.wait_for(
                lambda: (
                    self._closed or cancel.is_set() or self._unavailable is not None or self._taken != self._generation
                ),
                timeout,
            )
            self._raise_if_stopped(cancel)
            if gone:
                self._taken = None
            return bool(gone)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.close()

    # ----------------------------------------------------------------- used by the channel

    def check_session(self, generation: int) -> None:
        with self._cond:
            if self._unavailable is not None:
                raise ReaderUnavailable(self._name, self._unavailable)
            if generation != self._generation:
                raise CardRemoved(self._name, "the card left the field")

    def exchange(self, function: Callable[[], T], timeout: float) -> T:
        """Run a card-side call on the watchdog worker, bounded by `timeout`."""
        if self._worker is None or self._worker.abandoned:
            self._worker = ExchangeWorker(self._name)
        started = time.monotonic()
        try:
            return self._worker.call(function, timeout)
        except (DeadlineExceeded, WorkerAbandoned):
            waited = time.monotonic() - started
            raise TransmitTimeout(self._name, f"no answer within {timeout:.3g} s ({waited:.3f} s)") from None
        except WorkerClosed:
            raise ReaderError(self._name, "the reader is closed") from None

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _raise_if_stopped(self, cancel: threading.Event) -> None:
        if self._closed:
            raise WaitCancelled(self._name, "reader closed")
        if cancel.is_set():
            raise WaitCancelled(self._name, "wait cancelled")
        if self._unavailable is not None:
            raise ReaderUnavailable(self._name, self._unavailable)
