"""What each card did here today: discounted meals per meal period, venue entries per day.

Kept like the journal's passback marks: a table in the queue's database, written through
the queue's transaction API (synchronous=FULL), so the counts survive a restart and a power
cut, and a damaged file puts the terminal out of service rather than forgetting a cap.

A row stands for one committed tap record in one scope, keyed by its tap id: counting the
same record twice (two readers, a record published again) changes nothing. The canteen and the venue
kinds count a record once it is committed, from the event hub (`Kind.count`), so a tap
whose record could not be committed never uses up a discounted meal or the day's entry.

Days are the terminal's local calendar days, as text (2026-05-20); rows older than `KEEP_DAYS`
are pruned as new ones come, so the table holds a few days of taps at most.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator

from reader.uplink.errors import QueueStorageError
from reader.uplink.queue import TapQueue

KEEP_DAYS = 2
"""Days of rows kept: today's decide; yesterday's stay for a terminal whose clock steps back."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS daily_counts (
        tap_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        token TEXT NOT NULL,
        day TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (tap_id, scope)
    )""",
    "CREATE INDEX IF NOT EXISTS daily_counts_scope_day ON daily_counts (scope, day, token)",
)


class DailyCounts:
    """Counted taps by scope (e.g. "meal:lunch", "venue"), card token and local day."""

    def __init__(self, queue: TapQueue) -> None:
        self._queue = queue
        with queue.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The queue's connection for a lookup; a damaged file is a storage error (out of service)."""
        try:
            with self._queue.read() as conn:
                yield conn
        except sqlite3.Error as error:
            raise QueueStorageError(f"cannot read the daily counts: {error}") from error

    def add(self, tap_id: str, scope: str, token: str, at: dt.datetime) -> bool:
        """Count the committed tap `tap_id` of card `token` in `scope` on the local day of `at`.

        `at` is the tap's local time with its offset. Returns False when the tap was counted
        already in `scope`. Raises the queue's OutOfServiceError subclasses when it cannot be written.
        """
        day = at.date()
        with self._queue.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO daily_counts VALUES (?, ?, ?, ?, ?)",
                (tap_id, scope, token, day.isoformat(), at.timestamp()),
            )
            oldest = day - dt.timedelta(days=KEEP_DAYS - 1)
            conn.execute("DELETE FROM daily_counts WHERE day < ?", (oldest.isoformat(),))
        return cursor.rowcount == 1

    def count(self, scope: str, day: dt.date, token: str | None = None) -> int:
        """Taps counted in `scope` on `day`: of the card `token`, or of every card."""
        query = "SELECT COUNT(*) FROM daily_counts WHERE scope = ? AND day = ?"
        values: tuple[str, ...] = (scope, day.isoformat())
        if token is not None:
            query += " AND token = ?"
            values += (token,)
        with self._reading() as conn:
            (found,) = conn.execute(query, values).fetchone()
        return int(found)

    def last(self, scope: str, token: str) -> dt.datetime | None:
        """When the card `token` was last counted in `scope` (UTC), within the kept days."""
        with self._reading() as conn:
            (at,) = conn.execute(
                "SELECT MAX(at) FROM daily_counts WHERE scope = ? AND token = ?", (scope, token)
            ).fetchone()
        return None if at is None else dt.datetime.fromtimestamp(at, dt.UTC)
