"""Retry pacing, one implementation for the uplinks, the readers and the serial peripherals.

Exponential steps, capped. The uplinks add "equal jitter": when a depot's worth of buses
regains coverage together, fixed delays would make them retry in lockstep; keeping half of
each step fixed means a retry never comes immediately, and the other half is spread at
random. A reader or a serial device reconnects alone, so it retries on fixed steps.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass, field
from typing import Protocol


class BackoffPolicy(Protocol):
    """What a configuration says about retries (`reader.uplink.settings.BackoffSettings`)."""

    @property
    def initial_s(self) -> float: ...

    @property
    def max_s(self) -> float: ...

    @property
    def multiplier(self) -> float: ...


@dataclass
class Backoff:
    """Delays that grow by `multiplier` per consecutive failure up to `cap`, with or without jitter."""

    initial: float
    cap: float
    multiplier: float = 2.0
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    """Consecutive failures since the last reset."""

    @classmethod
    def of(cls, policy: BackoffPolicy, rng: random.Random | None = None) -> Backoff:
        """The jittered backoff a configuration describes."""
        return cls(policy.initial_s, policy.max_s, policy.multiplier, rng=rng or random.Random())

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        step = min(self.cap, self.initial * self.multiplier ** min(self.failures, 64))
        self.failures += 1
        return step / 2 + self.rng.uniform(0, step / 2) if self.jitter else step

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.failures = 0


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
