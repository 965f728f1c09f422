"""The tap record: what every tap leaves behind, for the queue and the back office.

Privacy rules (uplink.md §6): the card is identified by a keyed token, HMAC-SHA256 of its
number under a per-deployment key, never by the number itself; names and ID numbers never
enter a record. The tap id is the back office's idempotency key: time-ordered so that a
terminal's taps sort in the order they happened, unique without coordination.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from reader.daemon.policy import Decision

SCHEMA_VERSION = 2
"""The version of the record's layout, `reader/daemon/tap-record.schema.json` (2: record_type,
time_band, card_type, parameters_version)."""


def card_token(key: bytes, card_number: str) -> str:
    """HMAC-SHA256 of the card number under the deployment key, hex (the hotlist's key too)."""
    return hmac.new(key, card_number.encode("ascii"), hashlib.sha256).hexdigest()


class TapIdGenerator:
    """Time-ordered unique ids: 48-bit milliseconds, a 16-bit counter, 64 random bits (hex).

    The counter keeps ids ordered within one millisecond and across a clock that steps
    back (the last timestamp is reused until the clock catches up); the random part keeps
    two processes, or a restart within the same millisecond, from colliding.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def next(self) -> str:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms > self._last_ms:
                self._last_ms, self._counter = now_ms, 0
            else:
                self._counter += 1
                if self._counter > 0xFFFF:
                    self._last_ms, self._counter = self._last_ms + 1, 0
            return f"{self._last_ms:012x}{self._counter:04x}{os.urandom(8).hex()}"


@dataclass(frozen=True)
class Debit:
    """The money side of a debit: what the card and the PSAM said.

    Balances are the purse's own money, which goes below zero when the card uses its
    overdraft allowance; the allowance is kept apart, so own money plus allowance is what
    the card itself counts.
    """

    balance_before: int
    balance_after: int
    atc: int
    tac: str
    psam_sequence: int
    mac2_verified: bool
    recovered: bool = False
    overdraft_allowance: int = 0


def tap_record(
    *,
    tap_id: str,
    terminal_id: str,
    profile: str,
    reader: str,
    when: dt.datetime,
    decision: Decision,
    token: str | None,
    region: str | None,
    hotlist_version: str | None,
    debit: Debit | None = None,
    balance: int | None = None,
    parameters_version: int | None = None,
    record_type: str = "tap",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record of one tap; `when` must be timezone-aware (local time with its offset).

    `record_type` is "tap" for a tap the terminal decided, "grey" for a torn debit whose card
    never came back (clearing houses' name for it): its ATC, PSAM sequence, amount and time
    let the back office match it against the card's next transaction.
    """
    if when.tzinfo is None:
        raise ValueError("tap time must carry its UTC offset")
    fare = decision.fare
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "record_type": record_type,
        "tap_id": tap_id,
        "terminal_id": terminal_id,
        "profile": profile,
        "reader": reader,
        "time": when.isoformat(timespec="milliseconds"),
        "result": decision.outcome.value,
        "reason": decision.reason.value,
        "card_token": token,
        "region": region,
        "fare": fare.amount if fare else None,
        "fare_base": fare.base if fare else None,
        "transfer": fare.transfer if fare else None,
        "concession": fare.band if fare else None,
        "time_band": getattr(fare, "time_band", None),
        "card_type": getattr(fare, "card_type", None),
        "balance_before": debit.balance_before if debit else balance,
        "balance_after": debit.balance_after if debit else None,
        "atc": debit.atc if debit else None,
        "tac": debit.tac if debit else None,
        "psam_sequence": debit.psam_sequence if debit else None,
        "mac2_verified": debit.mac2_verified if debit else None,
        "recovered": debit.recovered if debit else None,
        "overdraft_allowance": debit.overdraft_allowance if debit else None,
        "hotlist_version": hotlist_version,
        "parameters_version": parameters_version,
    }
    if extra:
        record.update(extra)
    return record
