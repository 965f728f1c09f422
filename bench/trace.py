"""Card-side timestamps: every control message and APDU a virtual device sees, on one clock.

The benchmarks time a tap from the card's point of view, which is the only point both the
daemon and a bare PC/SC client share: when pcscd first reached the card after it was put
in the slot, when each command arrived and its answer left. `time.perf_counter` is
CLOCK_MONOTONIC on Linux, so these stamps compare with those taken in the daemon's threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reader.backends.base import CardSide


@dataclass(frozen=True)
class Control:
    """A power or ATR request from the reader side."""

    slot: str
    kind: str
    at: float


@dataclass(frozen=True)
class Apdu:
    """One command as the device saw it: bytes both ways, arrival and departure."""

    slot: str
    command: bytes
    response: bytes
    start: float
    end: float

    @property
    def ins(self) -> int:
        return self.command[1] if len(self.command) > 1 else -1


class TraceLog:
    """What several traced devices saw, in one ordered list (cleared per tap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.controls: list[Control] = []
        self.apdus: list[Apdu] = []

    def clear(self) -> None:
        with self._lock:
            self.controls = []
            self.apdus = []

    def control(self, slot: str, kind: str) -> None:
        at = time.perf_counter()
        with self._lock:
            self.controls.append(Control(slot, kind, at))

    def apdu(self, entry: Apdu) -> None:
        with self._lock:
            self.apdus.append(entry)

    def snapshot(self) -> tuple[list[Control], list[Apdu]]:
        with self._lock:
            return list(self.controls), list(self.apdus)


class TracedCard:
    """A `CardSide` that stamps everything the inner device is asked, under a slot name."""

    def __init__(self, card: CardSide, slot: str, log: TraceLog) -> None:
        self.card = card
        self.slot = slot
        self.log = log

    def power_on(self) -> bytes:
        self.log.control(self.slot, "power_on")
        return self.card.power_on()

    def power_off(self) -> None:
        self.log.control(self.slot, "power_off")
        self.card.power_off()

    def atr(self) -> bytes:
        self.log.control(self.slot, "atr")
        return self.card.atr()

    def transmit(self, apdu: bytes) -> bytes:
        start = time.perf_counter()
        response = self.card.transmit(apdu)
        self.log.apdu(Apdu(self.slot, bytes(apdu), bytes(response), start, time.perf_counter()))
        return response


class Swappable:
    """A `CardSide` whose device is replaced by a fresh one on `renew()`, the link staying up.

    The PSAM stays in its slot for the whole benchmark; renewing it before each tap puts it
    back in the same state (sequence number, random source), so every tap, and the replay
    of a recorded tap, meets the same PSAM answers.
    """

    def __init__(self, factory: Callable[[], CardSide]) -> None:
        self.factory = factory
        self.card = factory()

    def renew(self) -> None:
        self.card = self.factory()

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def atr(self) -> bytes:
        return self.card.atr()

    def transmit(self, apdu: bytes) -> bytes:
        return self.card.transmit(apdu)
