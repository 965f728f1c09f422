"""Tap figures for the status page and the metrics, taken from the records as they are published.

Nothing here is called by the tap pipeline: `TapStats` observes the event hub, so it counts
exactly the records that were committed to the queue. It keeps counts since start (by kind,
result and reason), taps per minute over a sliding window, the durations of live taps, and
the last few taps with the card token shortened. Personal data never reaches it: a record
holds none.

A tap's duration runs from the card's detection to its committed record. The detection time
is the 48-bit millisecond prefix of the tap id the reader loop bound into the logging
context when the card arrived (`TapIdGenerator`); a record published outside a tap (a torn
debit settled at start-up) has no such context and no duration.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

DURATION_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
"""Upper bounds in seconds: a bus tap must finish well inside 300 ms, a holder read within about 1 s."""

TOKEN_SHOWN = 8
"""Hex characters of the card token shown on the page: enough to tell taps of one card apart."""


def tap_id_seconds(tap_id: str) -> float | None:
    """When a tap id was made (Unix seconds), from its 48-bit millisecond prefix; None if not one of ours."""
    if len(tap_id) != 32:
        return None
    try:
        return int(tap_id[:12], 16) / 1000
    except ValueError:
        return None


def mask_token(token: object) -> str | None:
    """The first characters of a card token and an ellipsis, as the page shows it."""
    return f"{token[:TOKEN_SHOWN]}…" if isinstance(token, str) and token else None


@dataclass
class _Durations:
    """A cumulative histogram of tap durations, as Prometheus wants it."""

    buckets: list[int]
    count: int = 0
    total: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for index, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1


class TapStats:
    """Counts and recent history of committed taps; `observe` is an `EventHub` observer."""

    def __init__(
        self,
        *,
        window_minutes: int = 360,
        recent: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_minutes = window_minutes
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._per_minute: collections.Counter[int] = collections.Counter()
        self._durations: dict[str, _Durations] = {}
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=recent)

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one committed record (called by the event hub in the publishing thread)."""
        now = self._clock()
        kind = str(record.get("profile") or "unknown")
        result = str(record.get("result") or "unknown")
        reason = str(record.get("reason") or "unknown")
        detected = tap_id_seconds(str(structlog.contextvars.get_contextvars().get("tap_id") or ""))
        shown = {
            "tap_id": record.get("tap_id"),
            "time": record.get("time"),
            "committed_at": now,
            "reader": record.get("reader"),
            "result": result,
            "reason": reason,
            "fare": record.get("fare"),
            "region": record.get("region"),
            "card": mask_token(record.get("card_token")),
        }
        minute = int(now // 60)
        with self._lock:
            self._counts[(kind, result, reason)] += 1
            self._per_minute[minute] += 1
            oldest = minute - self.window_minutes
            for old in [m for m in self._per_minute if m <= oldest]:
                del self._per_minute[old]
            if detected is not None and 0 <= now - detected < 3600:
                durations = self._durations.setdefault(kind, _Durations([0] * len(DURATION_BUCKETS)))
                durations.add(now - detected)
            self._recent.appendleft(shown)

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Taps since start by (kind, result, reason)."""
        with self._lock:
            return dict(self._counts)

    def durations(self) -> dict[str, tuple[list[tuple[float, int]], int, float]]:
        """Per kind: cumulative (upper bound, count) buckets ending with +Inf, the count and the sum."""
        with self._lock:
            return {
                kind: (
                    [*zip(DURATION_BUCKETS, d.buckets, strict=True), (math.inf, d.count)],
                    d.count,
                    d.total,
                )
                for kind, d in self._durations.items()
            }

    def snapshot(self) -> dict[str, Any]:
        """The page's tap figures: totals, by reason, per minute over the window, the last taps."""
        now = self._clock()
        current = int(now // 60)
        first = current - self.window_minutes + 1
        with self._lock:
            counts = dict(self._counts)
            per_minute = [self._per_minute.get(minute, 0) for minute in range(first, current + 1)]
            recent = [dict(tap) for tap in self._recent]
        by_reason: collections.Counter[str] = collections.Counter()
        by_result: collections.Counter[str] = collections.Counter()
        for (_, result, reason), count in counts.items():
            by_reason[reason] += count
            by_result[result] += count
        return {
            "since": self._started,
            "total": sum(counts.values()),
            "by_result": dict(by_result),
            "by_reason": dict(by_reason.most_common()),
            "per_minute": {"start": first * 60, "step_s": 60, "counts": per_minute},
            "recent": recent,
        }
