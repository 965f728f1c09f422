"""Retry pacing shared by every uplink: exponential backoff with jitter, and Retry-After.

Jitter matters for a fleet: when a depot's worth of buses regains coverage together, fixed
delays would make them retry in lockstep. "Equal jitter" keeps half of each step fixed, so a
retry never comes immediately, and spreads the other half at random.
"""

from __future__ import annotations

import email.utils
import random

from reader.uplink.settings import BackoffSettings


class Backoff:
    """Delays that double (by `multiplier`) per consecutive failure, capped, with jitter."""

    def __init__(self, settings: BackoffSettings, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last reset."""
        return self._failures

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        s = self._settings
        step = min(s.max_s, s.initial_s * s.multiplier ** min(self._failures, 64))
        self._failures += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        """Forget past failures after a success."""
        self._failures = 0


def parse_retry_after(value: str | None, now: float, cap: float) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or HTTP-date), capped; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - now), cap)
