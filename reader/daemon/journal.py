"""The daemon's own durable state: debits in flight, and when each card last paid here.

A debit is journalled before DEBIT FOR PURCHASE is sent, with everything GET TRANSACTION
PROOF needs, and cleared once the tap's record is in the queue. So a card pulled away
mid-debit is settled when it returns, and a daemon that dies between the card's commit and
the queue's leaves an entry that the next start turns into a record: a committed debit is
never lost. The passback table lives here too, so a restart does not charge a card twice.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from protocols.purchase import Recovery

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_debits (
    serial TEXT PRIMARY KEY,
    tap_id TEXT NOT NULL,
    recovery TEXT NOT NULL,
    created_at REAL NOT NULL,
    token TEXT,
    region TEXT,
    allowance INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS last_paid (
    token TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""

_SELECT_PENDING = "SELECT tap_id, recovery, created_at, token, region, allowance FROM pending_debits"


@dataclass(frozen=True)
class PendingDebit:
    """A debit whose outcome the terminal does not know yet."""

    tap_id: str
    recovery: Recovery
    created_at: dt.datetime
    token: str | None = None
    region: str | None = None
    allowance: int = 0
    """The purse's overdraft allowance, which the card counts in its balances."""


def _encode(recovery: Recovery) -> str:
    fields = asdict(recovery)
    fields["terminal_id"] = recovery.terminal_id.hex()
    fields["time"] = recovery.time.isoformat()
    return json.dumps(fields)


def _decode(text: str) -> Recovery:
    fields = json.loads(text)
    fields["terminal_id"] = bytes.fromhex(fields["terminal_id"])
    fields["time"] = dt.datetime.fromisoformat(fields["time"])
    return Recovery(**fields)


class Journal:
    """SQLite at synchronous=FULL: one small commit before each debit, one after."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def begin_debit(self, debit: PendingDebit) -> None:
        """Record a debit about to be sent, with what its record needs; returns once it is on disk."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending_debits VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    debit.recovery.application_serial,
                    debit.tap_id,
                    _encode(debit.recovery),
                    debit.created_at.timestamp(),
                    debit.token,
                    debit.region,
                    debit.allowance,
                ),
            )

    def end_debit(self, serial: str) -> None:
        """The debit's outcome is recorded in the queue: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM pending_debits WHERE serial = ?", (serial,))

    def pending(self, serial: str) -> PendingDebit | None:
        with self._lock:
            row = self._db.execute(
                f"{_SELECT_PENDING} WHERE serial = ?", (serial,)
            ).fetchone()
        return None if row is None else self._pending(row)

    def all_pending(self) -> list[PendingDebit]:
        with self._lock:
            rows = self._db.execute(_SELECT_PENDING).fetchall()
        return [self._pending(row) for row in rows]

    @staticmethod
    def _pending(row: tuple[str, str, float, str | None, str | None, int]) -> PendingDebit:
        created = dt.datetime.fromtimestamp(row[2], dt.UTC)
        return PendingDebit(row[0], _decode(row[1]), created, token=row[3], region=row[4], allowance=row[5])

    def last_paid(self, token: str) -> dt.datetime | None:
        with self._lock:
            row = self._db.execute("SELECT at FROM last_paid WHERE token = ?", (token,)).fetchone()
        return None if row is None else dt.datetime.fromtimestamp(row[0], dt.UTC)

    def recorded(
        self, serial: str | None, paid: tuple[str, dt.datetime] | None, keep: dt.timedelta
    ) -> None:
        """A tap's record is in the queue: forget its debit, remember its paid ride, in one commit.

        One transaction, so one sync, however much it settles; entries of `last_paid` older
        than `keep` (the passback window) are pruned on the way.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if serial is not None:
                    self._db.execute("DELETE FROM pending_debits WHERE serial = ?", (serial,))
                if paid is not None:
                    token, at = paid
                    self._db.execute("INSERT OR REPLACE INTO last_paid VALUES (?, ?)", (token, at.timestamp()))
                    self._db.execute("DELETE FROM last_paid WHERE at < ?", ((at - keep).timestamp(),))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
