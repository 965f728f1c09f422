"""Repeat riders' age bands, so a card seen before needs no SSSE authentication to be priced.

Reading the birth date costs a third-generation card eleven commands (the PSAM's mutual
authentication, SELECT EF06, READ 0D) on every tap. A holder's band changes on one known day,
so the terminal keeps, per card token, only the band and the first day it could change, never
the birth date. Kept in memory (a restart reads each card once more), bounded, and forgotten
when the bands are reconfigured.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from reader.daemon.fares import AgeBand

DEFAULT_CAPACITY = 200_000
"""Cards remembered: a depot's riders of several weeks (about 100 bytes each)."""


@dataclass(frozen=True)
class KnownBand:
    """The band a holder is in (None: none of the bands), valid until the day before `until`."""

    band: AgeBand | None
    until: dt.date | None


class BandCache:
    """Card token -> the holder's band, until the day it could change (least recently used goes first)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a band cache holds at least one card")
        self._capacity = capacity
        self._bands: tuple[AgeBand, ...] = ()
        self._entries: OrderedDict[str, KnownBand] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, day: dt.date, bands: Sequence[AgeBand]) -> KnownBand | None:
        """The band kept for `token` if it still holds on `day` under these `bands`, else None."""
        with self._lock:
            self._under(bands)
            known = self._entries.get(token)
            if known is None:
                return None
            if known.until is not None and day >= known.until:
                del self._entries[token]
                return None
            self._entries.move_to_end(token)
            return known

    def put(self, token: str, known: KnownBand, bands: Sequence[AgeBand]) -> None:
        with self._lock:
            self._under(bands)
            self._entries[token] = known
            self._entries.move_to_end(token)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _under(self, bands: Sequence[AgeBand]) -> None:
        """Forget everything when the bands changed (SIGHUP, a parameter bundle)."""
        current = tuple(bands)
        if current != self._bands:
            self._entries.clear()
            self._bands = current
