"""The daemon's own durable state: debits in flight, and what each card did here lately.

A debit is journalled before DEBIT FOR PURCHASE is sent, with everything GET TRANSACTION
PROOF needs. The journal lives in the queue's database, so the tap's record and the
settlement of its debit are one commit (`settle`, passed to `TapQueue.enqueue`): after a
crash at any moment there is either a pending debit and no record, or a record and no
pending debit. A card pulled away mid-debit is settled when it returns; a daemon that dies
between the card's commit and the queue's leaves an entry that becomes a record later: a
committed debit is never lost, and never recorded twice.

The journal identifies a purse by a keyed digest of its serial, never the serial itself:
the digest is recomputed from the card that comes back, and the record of a card that never
returned carries the masked serial kept beside it.

`recent_cards` serves passback: when a card last paid here, or was refused as not genuine
(a clone is refused at once within the window instead of trying again), so a restart does
not charge a card twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from protocols.purchase import Recovery
from reader.log import get_logger
from reader.uplink.errors import QueueStorageError
from reader.uplink.queue import TapQueue

log = get_logger(component="journal")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pending_debits (
        purse TEXT PRIMARY KEY,
        serial_masked TEXT NOT NULL,
        tap_id TEXT NOT NULL,
        recovery TEXT NOT NULL,
        created_at REAL NOT NULL,
        token TEXT,
        region TEXT,
        allowance INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS recent_cards (
        token TEXT NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (token, kind)
    )""",
)

_SELECT_PENDING = "SELECT serial_masked, tap_id, recovery, created_at, token, region, allowance FROM pending_debits"
_Row = tuple[str, str, str, float, str | None, str | None, int]


class CardMark(enum.StrEnum):
    """What the journal remembers of a card, for the passback window."""

    PAID = "paid"
    NOT_GENUINE = "not_genuine"


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
    serial_masked: str = ""
    """The e-purse serial with all but its last four digits masked, for the record."""


@dataclass(frozen=True)
class Settlement:
    """What a tap's record settles in the journal, committed in the record's transaction."""

    serial: str | None = None
    """The e-purse whose pending debit the record settles."""
    mark: tuple[str, CardMark, dt.datetime] | None = None
    """(card token, what happened, when): remembered for the passback window."""
    keep: dt.timedelta = dt.timedelta(0)
    """How long marks are kept (the passback window); older ones are pruned."""


def mask_serial(serial: str) -> str:
    """All but the last four digits replaced by '*'."""
    return "*" * max(0, len(serial) - 4) + serial[-4:]


def _encode(recovery: Recovery) -> str:
    fields = dataclasses.asdict(recovery)
    fields.pop("application_serial")
    fields["terminal_id"] = recovery.terminal_id.hex()
    fields["time"] = recovery.time.isoformat()
    return json.dumps(fields)


def _decode(text: str, serial: str) -> Recovery:
    fields = json.loads(text)
    fields["terminal_id"] = bytes.fromhex(fields["terminal_id"])
    fields["time"] = dt.datetime.fromisoformat(fields["time"])
    return Recovery(application_serial=serial, **fields)


class Journal:
    """Pending debits and recent cards, in the queue's database (synchronous=FULL)."""

    def __init__(self, queue: TapQueue, key: bytes) -> None:
        self._queue = queue
        self._key = key
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
            raise QueueStorageError(f"cannot read the journal: {error}") from error

    def purse(self, serial: str) -> str:
        """The keyed digest that stands for the e-purse `serial` in the journal."""
        return hmac.new(self._key, b"purse:" + serial.encode("ascii"), hashlib.sha256).hexdigest()

    # -- debits ------------------------------------------------------------------------------

    def begin_debit(self, debit: PendingDebit) -> None:
        """Record a debit about to be sent; returns once it is on disk.

        Raises the queue's OutOfServiceError subclasses when it cannot be written (disk full):
        DEBIT must then not be sent.
        """
        serial = debit.recovery.application_serial
        with self._queue.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO pending_debits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.purse(serial),
                    mask_serial(serial),
                    debit.tap_id,
                    _encode(debit.recovery),
                    debit.created_at.timestamp(),
                    debit.token,
                    debit.region,
                    debit.allowance,
                ),
            )

    def pending(self, serial: str) -> PendingDebit | None:
        """The pending debit of the purse `serial`, if any (its recovery carries the serial)."""
        with self._reading() as conn:
            row = conn.execute(f"{_SELECT_PENDING} WHERE purse = ?", (self.purse(serial),)).fetchone()
        return None if row is None else _pending(row, serial)

    def all_pending(self) -> list[PendingDebit]:
        """Every pending debit, oldest first; their recoveries carry no serial (masked beside)."""
        with self._reading() as conn:
            rows = conn.execute(f"{_SELECT_PENDING} ORDER BY created_at").fetchall()
        return [_pending(row, "") for row in rows]

    def clear(self, serial: str | None = None, *, tap_id: str | None = None) -> None:
        """Forget a pending debit whose record is already in the queue (a settlement seen twice)."""
        with self._queue.transaction() as conn:
            if serial is not None:
                conn.execute("DELETE FROM pending_debits WHERE purse = ?", (self.purse(serial),))
            if tap_id is not None:
                conn.execute("DELETE FROM pending_debits WHERE tap_id = ?", (tap_id,))

    def settle(self, settlement: Settlement) -> Callable[[sqlite3.Connection], None]:
        """The statements that settle `settlement`, to run inside the record's transaction."""

        def run(conn: sqlite3.Connection) -> None:
            if settlement.serial is not None:
                conn.execute("DELETE FROM pending_debits WHERE purse = ?", (self.purse(settlement.serial),))
            if settlement.mark is not None:
                token, kind, at = settlement.mark
                conn.execute(
                    "INSERT OR REPLACE INTO recent_cards VALUES (?, ?, ?)", (token, kind.value, at.timestamp())
                )
                conn.execute("DELETE FROM recent_cards WHERE at < ?", ((at - settlement.keep).timestamp(),))

        return run

    def apply(self, settlement: Settlement) -> None:
        """Settle on its own, in a transaction of its own: for a tap whose record is queued already."""
        with self._queue.transaction() as conn:
            self.settle(settlement)(conn)

    def settle_tap(self, tap_id: str) -> Callable[[sqlite3.Connection], None]:
        """The statement that settles the pending debit of `tap_id` (a card that never came back)."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM pending_debits WHERE tap_id = ?", (tap_id,))

        return run

    # -- recent cards ------------------------------------------------------------------------

    def last(self, token: str, kind: CardMark) -> dt.datetime | None:
        """When the card `token` was last marked `kind` here (within the kept window)."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT at FROM recent_cards WHERE token = ? AND kind = ?", (token, kind.value)
            ).fetchone()
        return None if row is None else dt.datetime.fromtimestamp(row[0], dt.UTC)

    # -- upgrade -----------------------------------------------------------------------------

    def adopt(self, old: Path) -> int:
        """Take over the pending debits of a journal file of an earlier version, then delete it.

        Earlier versions kept the journal in a file of its own, with the serial in clear;
        a debit pending there at the upgrade must not be forgotten. Returns how many moved.
        """
        if not old.exists():
            return 0
        source = sqlite3.connect(old)
        try:
            rows = source.execute(
                "SELECT serial, tap_id, recovery, created_at, token, region, allowance FROM pending_debits"
            ).fetchall()
        except sqlite3.Error as error:
            log.error("journal_old_file_unreadable", path=str(old), error=str(error))
            return 0
        finally:
            source.close()
        for serial, tap_id, recovery, created_at, token, region, allowance in rows:
            fields = json.loads(recovery)
            fields.pop("application_serial", None)
            debit = PendingDebit(
                tap_id,
                _decode(json.dumps(fields), serial),
                dt.datetime.fromtimestamp(created_at, dt.UTC),
                token,
                region,
                allowance,
            )
            self.begin_debit(debit)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{old}{suffix}").unlink(missing_ok=True)
        log.info("journal_old_file_adopted", pending=len(rows))
        return len(rows)


def _pending(row: _Row, serial: str) -> PendingDebit:
    masked, tap_id, recovery, created_at, token, region, allowance = row
    return PendingDebit(
        tap_id,
        _decode(recovery, serial),
        dt.datetime.fromtimestamp(created_at, dt.UTC),
        token=token,
        region=region,
        allowance=allowance,
        serial_masked=masked,
    )
