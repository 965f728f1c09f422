"""Tap records shaped like the daemon's, for tests and benchmarks (about 300 bytes of JSON)."""

from __future__ import annotations

import hashlib
import time
from typing import Any


def tap_id(n: int, run: int = 0) -> str:
    """A time-ordered, per-terminal unique id: run number, then sequence."""
    return f"{run:04d}-{n:010d}"


def tap_record(n: int, terminal_id: str = "VAL-000123", run: int = 0, **extra: Any) -> dict[str, Any]:
    """One authorised tap; the card token is a made-up keyed hash, never a card number."""
    record: dict[str, Any] = {
        "tap_id": tap_id(n, run),
        "terminal_id": terminal_id,
        "seq": n,
        "tapped_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "card_token": hashlib.sha256(f"card-{n % 5000}".encode()).hexdigest(),
        "masked_pan": "623012******" + f"{n % 10000:04d}",
        "scheme": "ssse",
        "result": "allow",
        "fare_fen": 200,
        "route": "42",
        "stop": "S0107",
        "vehicle": "B-2093",
        "hotlist_version": "2026-11-23.1",
    }
    record.update(extra)
    return record
