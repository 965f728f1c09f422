"""The durable tap queue: a tap is recorded here before the terminal says yes, and leaves only
once the back office has acknowledged it.

Why SQLite, and why these settings:
- WAL with synchronous=FULL for every enqueue: `enqueue` returns only after COMMIT has
  synced the WAL, so a power cut cannot take back a tap that the passenger was told was
  accepted. A crash (kill -9) loses nothing at any setting; FULL is for power loss.
  Deletes after an acknowledgement (and the other bookkeeping writes) commit at NORMAL:
  a power cut can at worst undo a delete, so a tap is sent twice and the back office
  drops the copy by tap id; the next FULL commit syncs the whole WAL, NORMAL commits too.
  This keeps one fsync per acknowledged batch off the senders' path.
- One connection per thread (the tap pipeline writes, senders read and delete); SQLite's
  own locking serialises writers, BEGIN IMMEDIATE takes the write lock up front so a
  transaction never fails half way on a lock upgrade.
- Rows are deleted only by `ack` (after the upstream acknowledgement) or moved to the
  poison table by `set_aside` (refused for good upstream); a crash between an upstream
  acknowledgement and the delete resends the rows, which the back office absorbs by tap id.
- Depth and bytes are kept by triggers in a one-row table, so the bound check inside the
  enqueue transaction is one primary-key read, and every process (the daemon, the CLI)
  sees the same figures.
- auto_vacuum=INCREMENTAL is set before the first table exists (it cannot be turned on
  later without a full VACUUM); freed pages are handed back after deliveries.
- An integrity check runs at open; a corrupt file is renamed aside (never deleted or
  overwritten), logged, and recorded in the new file's incident table.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from reader.log import get_logger
from reader.uplink.errors import (
    DiskFullError,
    DuplicateTapError,
    OutOfServiceError,
    QueueCorruptError,
    QueueFullError,
    QueueMissingError,
    QueueStorageError,
    TapRecordError,
    UplinkError,
)
from reader.uplink.settings import QueueSettings

SCHEMA_VERSION = 1

# Primary result codes (sqlite3.h); extended codes carry them in the low byte.
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_IOERR = 10
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE taps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal_id TEXT NOT NULL,
    tap_id TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (terminal_id, tap_id)
);
CREATE TABLE poison (
    seq INTEGER PRIMARY KEY,
    terminal_id TEXT NOT NULL,
    tap_id TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    set_aside_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    depth INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    last_delivery_at REAL,
    last_error_at REAL,
    last_error TEXT
);
INSERT INTO totals VALUES (1, 0, 0, 0, 0, NULL, NULL, NULL);
CREATE TRIGGER taps_in AFTER INSERT ON taps BEGIN
    UPDATE totals SET depth = depth + 1, bytes = bytes + NEW.size WHERE id = 1;
END;
CREATE TRIGGER taps_out AFTER DELETE ON taps BEGIN
    UPDATE totals SET depth = depth - 1, bytes = bytes - OLD.size WHERE id = 1;
END;
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

_TAP_COLUMNS = "seq, terminal_id, tap_id, body, enqueued_at, attempts, size"


@dataclass(frozen=True, slots=True)
class QueuedTap:
    """One queued tap as a sender sees it; `body` is the record's JSON text, sent as is."""

    seq: int
    terminal_id: str
    tap_id: str
    body: str
    enqueued_at: float
    attempts: int
    size: int

    def record(self) -> dict[str, Any]:
        """The tap record as it was enqueued."""
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass(frozen=True, slots=True)
class PoisonedTap:
    """A tap the upstream refused for good, kept aside until an operator retries it."""

    tap: QueuedTap
    set_aside_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Incident:
    """Something an operator must know about the queue file itself (a corrupt file moved aside)."""

    at: float
    kind: str
    detail: str


@dataclass(frozen=True)
class QueueStatus:
    """Figures for `sscard queue status` and the daemon's status report."""

    path: str
    depth: int
    bytes: int
    max_taps: int
    max_bytes: int
    oldest_age_s: float | None
    delivered_total: int
    last_delivery_at: float | None
    errors_total: int
    last_error: str | None
    last_error_at: float | None
    poison: int
    out_of_service: str | None
    incidents: list[Incident] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return asdict(self)


class TapQueue:
    """The SQLite tap queue; one instance per process, shared by the tap pipeline and senders.

    Each thread gets its own connection on first use. `readonly=True` opens an existing
    file for inspection only (the CLI uses it while the daemon runs): no integrity check,
    no repair, no writes.
    """

    def __init__(
        self,
        settings: QueueSettings,
        *,
        readonly: bool = False,
        on_corrupt: Literal["move_aside", "raise"] = "move_aside",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._path = Path(settings.path)
        self._readonly = readonly
        self._clock = clock
        self._local = threading.local()
        # Every connection with the lock its thread holds while using it, so close() never
        # closes a connection under a running statement.
        self._conns: list[tuple[sqlite3.Connection, threading.Lock]] = []
        self._conns_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._new_taps = threading.Event()
        self._out_of_service: OutOfServiceError | None = None
        self._free_at_failure = 0
        self._log = get_logger(component="queue", path=str(self._path))
        self.moved_aside: Path | None = None
        if readonly:
            if not self._path.exists():
                raise QueueMissingError(f"no queue at {self._path}")
        else:
            self._open_checked(on_corrupt)

    # -- opening -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def settings(self) -> QueueSettings:
        """The settings this queue was opened with."""
        return self._settings

    def _connect(self) -> sqlite3.Connection:
        timeout = self._settings.busy_timeout_s
        if self._readonly:
            uri = self._path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self._path, timeout=timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={int(self._settings.wal_size_limit_bytes)}")
        self._local.sync = "FULL"
        return conn

    def _open_checked(self, on_corrupt: str) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        problem: str | None = None
        if self._path.exists():
            problem = self._integrity_problem()
        if problem is not None:
            if on_corrupt != "move_aside":
                raise QueueCorruptError(self._path, problem)
            self.moved_aside = self._move_aside(problem)
        if not self._path.exists():
            # Taps are personal data: owner-only file; SQLite gives -wal and -shm the same mode.
            os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._using() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._create_schema(conn)
            elif version != SCHEMA_VERSION:
                raise QueueCorruptError(self._path, f"schema version {version}, this code knows {SCHEMA_VERSION}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueStorageError(f"journal_mode is {mode}, WAL could not be set")
            if self.moved_aside is not None:
                self._record_incident(conn, "corrupt_file_moved_aside", f"{self.moved_aside}: {problem}")
            depth = conn.execute("SELECT depth FROM totals WHERE id = 1").fetchone()[0]
        self._log.info("queue_opened", depth=depth)

    def _integrity_problem(self) -> str | None:
        """Why the existing file cannot be trusted, or None when it passes the check."""
        pragma = "integrity_check" if self._settings.integrity_check == "full" else "quick_check"
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._path, timeout=self._settings.busy_timeout_s, isolation_level=None)
            rows = conn.execute(f"PRAGMA {pragma}").fetchall()
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                return f"{pragma}: {exc}"
            raise
        finally:
            if conn is not None:
                conn.close()
        messages = [str(row[0]) for row in rows]
        if messages == ["ok"]:
            return None
        return f"{pragma}: " + "; ".join(messages[:5])

    def _move_aside(self, problem: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self._path}{suffix}")
            if source.exists():
                os.replace(source, Path(f"{target}{suffix}"))
        _fsync_dir(self._path.parent)
        self._log.error("queue_corrupt_moved_aside", moved_to=str(target), problem=problem)
        return target

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # auto_vacuum only takes effect if set before the first table is created.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_script(_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.Error:
            self._rollback(conn)
            raise

    def _record_incident(self, conn: sqlite3.Connection, kind: str, detail: str) -> None:
        with self._write_txn(conn):
            conn.execute("INSERT INTO incidents (at, kind, detail) VALUES (?, ?, ?)", (self._clock(), kind, detail))

    # -- connections and transactions ----------------------------------------------------

    @contextlib.contextmanager
    def _using(self, sync: Literal["FULL", "NORMAL"] | None = None) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held for the block, switched to `sync` for writes if given."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise UplinkError(f"queue {self._path} is closed")
            conn = self._connect()
            self._local.conn = conn
            self._local.lock = threading.Lock()
            with self._conns_lock:
                self._conns.append((conn, self._local.lock))
        with self._local.lock:
            if self._closed:
                raise UplinkError(f"queue {self._path} is closed")
            if sync is not None and self._local.sync != sync and not self._readonly:
                conn.execute(f"PRAGMA synchronous={sync}")
                self._local.sync = sync
            yield conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection without holding it (tests use it to read pragmas)."""
        with self._using() as conn:
            return conn

    def _discard_conn(self, conn: sqlite3.Connection) -> None:
        """Drop a connection whose state is unknown (a failed ROLLBACK); the next call reconnects."""
        with self._conns_lock:
            self._conns = [(c, lock) for c, lock in self._conns if c is not conn]
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        conn.close()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._log.error("queue_rollback_failed", error=str(exc))
            self._discard_conn(conn)

    @contextlib.contextmanager
    def _write_txn(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise

    def close(self) -> None:
        """Close every connection this queue opened, in any thread, once it is not in use."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn, lock in conns:
            with lock:
                conn.close()

    def __enter__(self) -> TapQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the tap pipeline's side ---------------------------------------------------------

    def enqueue(
        self, record: Mapping[str, Any], *, also: Callable[[sqlite3.Connection], None] | None = None
    ) -> int:
        """Record one tap durably and return its queue sequence number.

        Returns only after COMMIT. Raises an OutOfServiceError subclass when the tap cannot
        be recorded (queue bound reached, disk full, storage failure): the caller must then
        refuse the tap. Raises DuplicateTapError when the terminal reused a tap id.
        `also` runs in the same transaction: the daemon's journal settles the tap's debit
        there, so the record and the settlement are one commit, never one without the other.
        """
        terminal_id, tap_id, body = _encode(record)
        size = len(body.encode("utf-8"))
        try:
            self._check_free_space()
            try:
                with self._using("FULL") as conn, self._write_txn(conn):
                    depth, nbytes = conn.execute("SELECT depth, bytes FROM totals WHERE id = 1").fetchone()
                    self._check_bounds(depth + 1, nbytes + size)
                    cursor = conn.execute(
                        "INSERT INTO taps (terminal_id, tap_id, body, size, enqueued_at) VALUES (?, ?, ?, ?, ?)",
                        (terminal_id, tap_id, body, size, self._clock()),
                    )
                    if also is not None:
                        also(conn)
            except sqlite3.IntegrityError as exc:
                raise DuplicateTapError(terminal_id, tap_id) from exc
            except sqlite3.Error as exc:
                raise self._storage_error(exc) from exc
        except OutOfServiceError as exc:
            self._enter_out_of_service(exc)
            raise
        seq = cursor.lastrowid
        assert seq is not None
        self._leave_out_of_service()
        self._new_taps.set()
        return seq

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this database, committed at synchronous=FULL.

        For the daemon's journal, which lives in the same file so that a tap's record and the
        settlement of its debit commit together. Storage failures raise the same
        OutOfServiceError subclasses as `enqueue` (and put the queue out of service).
        """
        try:
            self._check_free_space()
            try:
                with self._using("FULL") as conn, self._write_txn(conn):
                    yield conn
            except sqlite3.Error as exc:
                raise self._storage_error(exc) from exc
        except OutOfServiceError as exc:
            self._enter_out_of_service(exc)
            raise

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """This thread's connection for reads (the journal's lookups)."""
        return self._using()

    def check_accepting(self) -> None:
        """Raise the OutOfServiceError that would refuse the next tap, without writing anything.

        The tap pipeline calls this before talking to a card, so a passenger is told
        "out of service" before a fare is taken rather than after.
        """
        try:
            self._check_free_space()
            with self._using() as conn:
                depth, nbytes = conn.execute("SELECT depth, bytes FROM totals WHERE id = 1").fetchone()
            self._check_bounds(depth + 1, nbytes + 1)
            sticky = self._out_of_service
            if isinstance(sticky, DiskFullError) and _free_bytes(self._path.parent) <= self._free_at_failure:
                # SQLite itself hit ENOSPC: stay out of service until some space comes back.
                raise sticky
        except OutOfServiceError as exc:
            self._enter_out_of_service(exc)
            raise
        except sqlite3.Error as exc:
            error = self._storage_error(exc)
            self._enter_out_of_service(error)
            raise error from exc
        self._leave_out_of_service()

    @property
    def out_of_service(self) -> OutOfServiceError | None:
        """The reason taps are refused now, or None while the queue accepts taps."""
        return self._out_of_service

    def _check_bounds(self, depth: int, nbytes: int) -> None:
        if depth > self._settings.max_taps:
            raise QueueFullError(f"{depth - 1} taps queued, bound is {self._settings.max_taps}")
        if nbytes > self._settings.max_bytes:
            raise QueueFullError(f"queued records would reach {nbytes} bytes, bound is {self._settings.max_bytes}")

    def _check_free_space(self) -> None:
        reserve = self._settings.min_free_bytes
        if reserve <= 0:
            return
        try:
            st = os.statvfs(self._path.parent)
        except OSError as exc:
            raise QueueStorageError(f"cannot stat {self._path.parent}: {exc}") from exc
        free = st.f_bavail * st.f_frsize
        if free < reserve:
            raise DiskFullError(f"{free} bytes free on the queue's file system, reserve is {reserve}")

    def _storage_error(self, exc: sqlite3.Error) -> OutOfServiceError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            return DiskFullError(str(exc))
        if code == _SQLITE_IOERR and _free_bytes(self._path.parent) == 0:
            return DiskFullError(f"{exc} (no space left)")
        return QueueStorageError(str(exc))

    def _enter_out_of_service(self, error: OutOfServiceError) -> None:
        if isinstance(error, DiskFullError):
            self._free_at_failure = _free_bytes(self._path.parent)
        with self._state_lock:
            previous, self._out_of_service = self._out_of_service, error
        if previous is None or previous.reason != error.reason:
            self._log.error("queue_out_of_service", reason=error.reason, detail=error.detail)

    def _leave_out_of_service(self) -> None:
        if self._out_of_service is None:
            return
        with self._state_lock:
            previous, self._out_of_service = self._out_of_service, None
        if previous is not None:
            self._log.warning("queue_back_in_service", was=previous.reason)

    # -- the senders' side ---------------------------------------------------------------

    def batch(self, limit: int, max_bytes: int | None = None, *, skip: Collection[int] = ()) -> list[QueuedTap]:
        """The oldest queued taps in order, leaving out `skip` (rows a sender already has in flight).

        At most `limit` rows and, when `max_bytes` is given, at most that many record bytes
        (but always one row if any is queued, so an oversized record still moves).
        """
        with self._using() as conn:
            rows = conn.execute(
                f"SELECT {_TAP_COLUMNS} FROM taps ORDER BY seq LIMIT ?", (limit + len(skip),)
            ).fetchall()
        out: list[QueuedTap] = []
        total = 0
        for row in rows:
            tap = QueuedTap(*row)
            if tap.seq in skip:
                continue
            if max_bytes is not None and out and total + tap.size > max_bytes:
                break
            out.append(tap)
            total += tap.size
            if len(out) >= limit:
                break
        return out

    def wait_for_taps(self, timeout: float) -> bool:
        """Block until a tap is enqueued in this process or `timeout` passes; True if woken."""
        woken = self._new_taps.wait(timeout)
        self._new_taps.clear()
        return woken

    def wake(self) -> None:
        """Wake a sender blocked in wait_for_taps (used when stopping)."""
        self._new_taps.set()

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete rows the upstream acknowledged; returns how many were still queued."""
        keys = [(seq,) for seq in seqs]
        if not keys:
            return 0
        with self._using("NORMAL") as conn:
            with self._write_txn(conn):
                deleted = conn.executemany("DELETE FROM taps WHERE seq = ?", keys).rowcount
                conn.execute(
                    "UPDATE totals SET delivered = delivered + ?, last_delivery_at = ? WHERE id = 1",
                    (deleted, self._clock()),
                )
            self._reclaim(conn)
        return deleted

    def set_aside(self, seqs: Iterable[int], reason: str) -> int:
        """Move refused rows to the poison table (never deleted, never retried on their own)."""
        keys = [(seq,) for seq in seqs]
        if not keys:
            return 0
        now = self._clock()
        with self._using("NORMAL") as conn, self._write_txn(conn):
            tap_ids = [
                row[0]
                for (seq,) in keys
                for row in conn.execute("SELECT tap_id FROM taps WHERE seq = ?", (seq,)).fetchall()
            ]
            conn.executemany(
                "INSERT INTO poison (seq, terminal_id, tap_id, body, size, enqueued_at, attempts, set_aside_at,"
                " reason) SELECT seq, terminal_id, tap_id, body, size, enqueued_at, attempts, ?, ?"
                " FROM taps WHERE seq = ?",
                [(now, reason, seq) for (seq,) in keys],
            )
            conn.executemany("DELETE FROM taps WHERE seq = ?", keys)
            conn.execute(
                "UPDATE totals SET errors = errors + 1, last_error = ?, last_error_at = ? WHERE id = 1",
                (f"set aside: {reason}", now),
            )
        self._log.warning("taps_set_aside", count=len(tap_ids), tap_ids=tap_ids[:20], reason=reason)
        return len(tap_ids)

    def record_failure(self, seqs: Iterable[int], error: str) -> None:
        """Count a failed delivery attempt (for these rows, if any) and remember the error."""
        with self._using("NORMAL") as conn, self._write_txn(conn):
            conn.executemany("UPDATE taps SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs])
            conn.execute(
                "UPDATE totals SET errors = errors + 1, last_error = ?, last_error_at = ? WHERE id = 1",
                (error[:500], self._clock()),
            )

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free >= self._settings.reclaim_after_pages:
            # executescript steps the pragma to completion; execute() would free one page only.
            conn.executescript("PRAGMA incremental_vacuum;")
            self._log.debug("queue_pages_reclaimed", pages=free)

    # -- operators' side -----------------------------------------------------------------

    def retry_poison(self, seqs: Iterable[int] | None = None) -> int:
        """Put poison rows back in the queue at their original place; returns how many moved.

        A row whose tap id was queued again meanwhile stays in the poison table.
        """
        with self._using("NORMAL") as conn, self._write_txn(conn):
            if seqs is None:
                conn.execute(
                    "INSERT OR IGNORE INTO taps (seq, terminal_id, tap_id, body, size, enqueued_at, attempts)"
                    " SELECT seq, terminal_id, tap_id, body, size, enqueued_at, attempts FROM poison"
                )
            else:
                conn.executemany(
                    "INSERT OR IGNORE INTO taps (seq, terminal_id, tap_id, body, size, enqueued_at, attempts)"
                    " SELECT seq, terminal_id, tap_id, body, size, enqueued_at, attempts FROM poison WHERE seq = ?",
                    [(s,) for s in seqs],
                )
            moved = conn.execute("DELETE FROM poison WHERE seq IN (SELECT seq FROM taps)").rowcount
        if moved:
            self._new_taps.set()
        self._log.info("poison_retried", count=moved)
        return moved

    def iter_taps(self, page: int = 1000) -> Iterator[QueuedTap]:
        """Every queued tap in order, read a page at a time so no long read transaction is held."""
        after = -1
        while True:
            with self._using() as conn:
                rows = conn.execute(
                    f"SELECT {_TAP_COLUMNS} FROM taps WHERE seq > ? ORDER BY seq LIMIT ?", (after, page)
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield QueuedTap(*row)
            after = rows[-1][0]

    def iter_poison(self, page: int = 1000) -> Iterator[PoisonedTap]:
        """Every poison row in queue order."""
        after = -1
        while True:
            with self._using() as conn:
                rows = conn.execute(
                    f"SELECT {_TAP_COLUMNS}, set_aside_at, reason FROM poison WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, page),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield PoisonedTap(QueuedTap(*row[:7]), row[7], row[8])
            after = rows[-1][0]

    def status(self) -> QueueStatus:
        """Depth, age of the oldest tap, deliveries, errors, poison, and incidents.

        Raises QueueStorageError when the file cannot be read (the main loop keeps going).
        """
        try:
            return self._status()
        except sqlite3.Error as exc:
            raise QueueStorageError(f"cannot read the queue's status: {exc}") from exc

    def _status(self) -> QueueStatus:
        with self._using() as conn:
            conn.execute("BEGIN")
            try:
                depth, nbytes, delivered, errors, last_delivery, last_error_at, last_error = conn.execute(
                    "SELECT depth, bytes, delivered, errors, last_delivery_at, last_error_at, last_error"
                    " FROM totals WHERE id = 1"
                ).fetchone()
                oldest = conn.execute("SELECT enqueued_at FROM taps ORDER BY seq LIMIT 1").fetchone()
                poison = conn.execute("SELECT count(*) FROM poison").fetchone()[0]
                incidents = [
                    Incident(*row)
                    for row in conn.execute("SELECT at, kind, detail FROM incidents ORDER BY id DESC LIMIT 5")
                ]
            finally:
                conn.execute("COMMIT")
        oos = self._out_of_service
        return QueueStatus(
            path=str(self._path),
            depth=depth,
            bytes=nbytes,
            max_taps=self._settings.max_taps,
            max_bytes=self._settings.max_bytes,
            oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest[0]),
            delivered_total=delivered,
            last_delivery_at=last_delivery,
            errors_total=errors,
            last_error=last_error,
            last_error_at=last_error_at,
            poison=poison,
            out_of_service=None if oos is None else oos.reason,
            incidents=incidents,
        )


def _encode(record: Mapping[str, Any]) -> tuple[str, str, str]:
    try:
        terminal_id = record["terminal_id"]
        tap_id = record["tap_id"]
    except KeyError as exc:
        raise TapRecordError(f"tap record lacks {exc.args[0]!r}") from exc
    if not isinstance(terminal_id, str) or not terminal_id or not isinstance(tap_id, str) or not tap_id:
        raise TapRecordError("tap_id and terminal_id must be non-empty strings")
    try:
        body = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TapRecordError(f"tap record is not JSON-serialisable: {exc}") from exc
    return terminal_id, tap_id, body


def _split_script(script: str) -> list[str]:
    """Statements of the schema script; triggers contain ';' so split on 'END;' boundaries too."""
    statements: list[str] = []
    buffer = ""
    for line in script.strip().splitlines():
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete schema statement: {buffer!r}")
    return statements


def _free_bytes(directory: Path) -> int:
    """Free bytes for unprivileged writers; -1 when unknown (the caller then reports a storage error)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
