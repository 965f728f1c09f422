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
- What is checked at open depends on how the last writer stopped. `close()` leaves a
  clean-shutdown marker beside the file (`<file>-clean`, fsynced, naming the file's inode,
  size and mtime) once the last connection closed and SQLite removed the WAL; opening
  removes it (durably) before anything is written. A kill -9 or a power cut therefore
  leaves no marker, and the next start runs the whole-file check (quick_check or
  integrity_check) before READY: after a crash the file must be trusted before a debit is
  journalled into it. The file is read ahead sequentially first (when it fits in memory),
  so a cold check costs about one sequential read rather than one seek per page. After a
  clean stop only cheap checks run before READY (page 1 header, the schema, both ends of
  every b-tree, the totals row): a few dozen page reads instead of every page, so a cold
  start with a million taps stays within a second. The whole-file check then runs in a
  background thread on a read-only connection.
- A file that fails its check at open is renamed aside (never deleted or overwritten),
  logged, and recorded in the new file's incident table. Corruption found by the
  background check cannot be moved aside while the daemon writes (its connections, and
  the journal's pending debits, would follow the renamed file); it is logged, recorded as
  an incident, and no clean marker is left at close, so the next start checks the whole
  file before READY and moves it aside there. A corrupt page met by a write meanwhile
  fails that write with SQLITE_CORRUPT, which refuses the tap as out of service.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
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

# Beside the database: present only between a clean close and the next open.
CLEAN_MARKER_SUFFIX = "-clean"
_MARKER_FORMAT = 1
# The tables this module creates; the cheap checks insist on them.
_REQUIRED_TABLES = ("taps", "poison", "totals", "incidents")
# Database header (https://www.sqlite.org/fileformat2.html#the_database_header).
_HEADER_SIZE = 100
_HEADER_MAGIC = b"SQLite format 3\x00"
_BACKGROUND_STOP_S = 5.0

PreviousStop = Literal["new", "clean", "unclean"]

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
        # How the last writer stopped, and what this open checked before returning.
        self.previous_stop: PreviousStop = "new"
        self.open_check: Literal["none", "cheap", "quick_check", "integrity_check"] = "none"
        # The background whole-file check after a clean stop: its finding, once it has one.
        self.background_problem: str | None = None
        # Bytes read ahead of the whole-file check at open (0: none, or it would not fit in memory).
        self.prefetched_bytes = 0
        self._background: threading.Thread | None = None
        self._background_conn: sqlite3.Connection | None = None
        self._background_lock = threading.Lock()
        self._background_done = threading.Event()
        if readonly:
            self._background_done.set()
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
        # The marker goes before anything can write: from here on a crash must read as unclean.
        clean = self._take_clean_marker()
        if self._path.exists():
            self.previous_stop = "clean" if clean else "unclean"
            if clean and self._settings.after_clean_stop != "before_ready":
                self.open_check = "cheap"
                problem = self._cheap_problem()
            else:
                self.open_check = "integrity_check" if self._settings.integrity_check == "full" else "quick_check"
                if self._settings.prefetch_before_check:
                    self.prefetched_bytes = self._prefetch()
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
        self._log.info("queue_opened", depth=depth, previous_stop=self.previous_stop, checked=self.open_check)
        if self.open_check == "cheap" and self.moved_aside is None and self._settings.after_clean_stop == "background":
            self._background = threading.Thread(target=self._background_check, name="queue-check", daemon=True)
            self._background.start()
        else:
            self._background_done.set()

    # -- the clean-shutdown marker -------------------------------------------------------

    @property
    def marker_path(self) -> Path:
        """The clean-shutdown marker beside the database file."""
        return self._path.with_name(self._path.name + CLEAN_MARKER_SUFFIX)

    def _take_clean_marker(self) -> bool:
        """Whether the last writer closed cleanly; removes the marker durably either way.

        Clean means: the marker is there, names this very file as it is now (inode, size,
        mtime in nanoseconds) and no WAL frames wait beside it (no WAL file, or an empty one
        as a read-only view leaves). Anything else (a marker from before a file was restored
        or replaced, a file written since by something that did not leave a marker, a WAL
        left by a crash) reads as unclean, which costs a slower start and nothing else.
        """
        marker = self.marker_path
        try:
            text = marker.read_text(encoding="ascii")
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError) as exc:
            self._log.warning("queue_clean_marker_unreadable", error=str(exc))
            text = ""
        try:
            marker.unlink()
            _fsync_dir(self._path.parent)
        except OSError as exc:
            # Left in place, it would make a crash from here on read as a clean stop.
            raise QueueStorageError(f"cannot remove the clean-shutdown marker {marker}: {exc}") from exc
        try:
            recorded = json.loads(text)
        except json.JSONDecodeError as exc:
            self._log.warning("queue_clean_marker_unreadable", error=str(exc))
            return False
        try:
            current = _file_identity(self._path)
        except FileNotFoundError:
            return False
        if recorded != current or not self._wal_is_empty():
            self._log.warning("queue_clean_marker_stale", marker=recorded, file=current)
            return False
        return True

    def _leave_clean_marker(self) -> None:
        """Write the marker after the last connection closed; skipped when the close was not clean.

        SQLite removes the WAL when the last connection to the file closes, after
        checkpointing it into the database and syncing that; frames still in a WAL mean
        another connection (another process) has the file open, so this close proves
        nothing. A background check that found corruption also leaves no marker, so the
        next start checks the whole file before READY. A marker that cannot be written is
        logged and costs the next start its full check: never a reason to fail a stop.
        """
        if self.background_problem is not None:
            self._log.warning("queue_closed_without_clean_marker", reason="corruption found in service")
            return
        if not self._wal_is_empty():
            self._log.info("queue_closed_without_clean_marker", reason="the file is still open elsewhere")
            return
        marker = self.marker_path
        scratch = marker.with_name(marker.name + ".tmp")
        try:
            identity = _file_identity(self._path)
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(identity).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(scratch, marker)
            _fsync_dir(self._path.parent)
        except OSError as exc:
            self._log.error("queue_clean_marker_failed", error=str(exc))

    def _wal_is_empty(self) -> bool:
        """No WAL frames beside the database: no WAL file, or one of zero bytes."""
        try:
            return os.stat(f"{self._path}-wal").st_size == 0
        except FileNotFoundError:
            return True

    # -- checks at open and in the background --------------------------------------------

    def _prefetch(self) -> int:
        """Read the database and its WAL once, start to end, before the whole-file check; bytes read.

        quick_check visits pages in b-tree order, one page per read: from a cold page cache
        that took 16 s for a million taps (715 MB) on the bench disk, against 1.2 s to read
        the file sequentially (the kernel reads ahead in large chunks) and 0.4 s for the
        check on cached pages. A file larger than half the memory available would push its
        own first pages out before the check reached them, so it is left alone.
        """
        files = [Path(f"{self._path}{suffix}") for suffix in ("", "-wal")]
        try:
            total = sum(path.stat().st_size for path in files if path.exists())
        except OSError as exc:
            self._log.warning("queue_prefetch_skipped", reason=str(exc))
            return 0
        available = _memory_available()
        if available is None or total > available // 2:
            self._log.info("queue_prefetch_skipped", bytes=total, memory_available=available)
            return 0
        done = 0
        buffer = bytearray(1 << 20)
        for path in files:
            try:
                f = path.open("rb", buffering=0)
            except FileNotFoundError:
                continue
            with f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while n := f.readinto(buffer):
                    done += n
        self._log.info("queue_prefetched", bytes=done)
        return done

    def _cheap_problem(self) -> str | None:
        """What the cheap checks after a clean stop find wrong, or None.

        They read page 1 and, for every table and index, the pages on the way to its first
        and last entry, with cell_size_check on: damage to a header, the schema, a root or
        an edge page, or a truncated file shows here. A bad page in the middle of a b-tree
        does not; the background check or the first statement that reads it finds it.
        """
        problem = _header_problem(self._path)
        if problem is not None:
            return f"header: {problem}"
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._path, timeout=self._settings.busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA cell_size_check=ON")
            conn.execute("BEGIN")  # one snapshot for every probe
            return _probe_problem(conn)
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                return f"cheap checks: {exc}"
            raise
        finally:
            if conn is not None:
                conn.close()

    def _background_check(self) -> None:
        """The whole-file check after a clean start, at the lowest CPU priority, read-only.

        Runs on its own read-only connection, so it never takes the write lock from the tap
        pipeline; close() interrupts it.
        """
        pragma = "integrity_check" if self._settings.integrity_check == "full" else "quick_check"
        started = time.monotonic()
        try:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except OSError as exc:
                self._log.debug("queue_background_check_priority_kept", error=str(exc))
            try:
                problem = self._run_background_check(pragma)
            except sqlite3.Error as exc:
                if self._closed:
                    self._log.info("queue_background_check_stopped", check=pragma)
                else:
                    self._log.error("queue_background_check_failed", check=pragma, error=str(exc))
                return
            seconds = round(time.monotonic() - started, 3)
            if problem is None:
                self._log.info("queue_background_check_passed", check=pragma, seconds=seconds)
                return
            self.background_problem = problem
            self._log.error("queue_corrupt_in_service", check=pragma, problem=problem, seconds=seconds)
            try:
                with self._using("NORMAL") as conn:
                    self._record_incident(conn, "corruption_found_in_service", problem)
            except (UplinkError, sqlite3.Error) as exc:
                self._log.error("queue_incident_not_recorded", kind="corruption_found_in_service", error=str(exc))
        finally:
            self._background_done.set()

    def _run_background_check(self, pragma: str) -> str | None:
        uri = self._path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=self._settings.busy_timeout_s, isolation_level=None)
        try:
            with self._background_lock:
                if self._closed:
                    return None
                self._background_conn = conn
            try:
                rows = conn.execute(f"PRAGMA {pragma}").fetchall()
            except sqlite3.DatabaseError as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                    return f"{pragma}: {exc}"
                raise
        finally:
            with self._background_lock:
                self._background_conn = None
            conn.close()
        messages = [str(row[0]) for row in rows]
        return None if messages == ["ok"] else f"{pragma}: " + "; ".join(messages[:5])

    def wait_for_background_check(self, timeout: float) -> bool:
        """Block until the background check has finished (or none runs); False on timeout."""
        return self._background_done.wait(timeout)

    def _stop_background_check(self) -> None:
        thread = self._background
        if thread is None:
            return
        deadline = time.monotonic() + _BACKGROUND_STOP_S
        # Interrupt until the thread is gone: an interrupt that lands between statements is lost.
        while thread.is_alive() and time.monotonic() < deadline:
            with self._background_lock:
                if self._background_conn is not None:
                    self._background_conn.interrupt()
            thread.join(0.05)
        if thread.is_alive():
            self._log.error("queue_background_check_not_stopped", timeout_s=_BACKGROUND_STOP_S)

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
        """Close every connection this queue opened, in any thread, once it is not in use.

        The first close of a writable queue then leaves the clean-shutdown marker, when
        this process was the last to have the file open.
        """
        first = not self._closed
        self._closed = True
        self._stop_background_check()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn, lock in conns:
            with lock:
                conn.close()
        if first and not self._readonly:
            self._leave_clean_marker()

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

    def batch_after(self, after: int, limit: int) -> list[QueuedTap]:
        """The oldest queued taps whose sequence number is above `after`, at most `limit`, in order.

        For a sender that keeps a cursor (the highest sequence number it has published on
        its connection): every row it has in flight lies at or below the cursor, so a read
        costs the rows returned, where `batch(skip=...)` would read the rows in flight again
        and drop them, a cost that grows with the window.
        """
        if limit <= 0:
            return []
        with self._using() as conn:
            rows = conn.execute(
                f"SELECT {_TAP_COLUMNS} FROM taps WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [QueuedTap(*row) for row in rows]

    def wait_for_taps(self, timeout: float) -> bool:
        """Block until a tap is enqueued in this process or `timeout` passes; True if woken."""
        woken = self._new_taps.wait(timeout)
        self._new_taps.clear()
        return woken

    def wake(self) -> None:
        """Wake a sender blocked in wait_for_taps (used when stopping)."""
        self._new_taps.set()

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete rows the upstream acknowledged; returns how many were still queued.

        One DELETE over a JSON array of the sequence numbers: for the batches of a fast
        sender (hundreds of rows) it costs 10-15 % less per row than a statement per row
        (bench/mqtt_drain.py measures the drain).
        """
        keys = json.dumps([int(seq) for seq in seqs])
        if keys == "[]":
            return 0
        with self._using("NORMAL") as conn:
            with self._write_txn(conn):
                deleted = conn.execute(
                    "DELETE FROM taps WHERE seq IN (SELECT value FROM json_each(?))", (keys,)
                ).rowcount
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


def _memory_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where the kernel does not say."""
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _file_identity(path: Path) -> dict[str, int]:
    """What the clean marker records of the database file: any write or replacement changes it."""
    st = os.stat(path)
    return {"format": _MARKER_FORMAT, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _header_problem(path: Path) -> str | None:
    """What is wrong with page 1's header, read straight from the file, or None.

    An empty file is a database with no pages yet, as SQLite itself treats it.
    """
    with path.open("rb") as f:
        header = f.read(_HEADER_SIZE)
        size = os.fstat(f.fileno()).st_size
    if size == 0:
        return None
    if len(header) < _HEADER_SIZE:
        return f"{len(header)} bytes, shorter than a database header"
    if header[:16] != _HEADER_MAGIC:
        return "no SQLite magic string"
    (page_size,) = struct.unpack_from(">H", header, 16)
    if page_size == 1:
        page_size = 65536
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        return f"page size {page_size}"
    if header[21:24] != b"\x40\x20\x20":
        return f"payload fractions {tuple(header[21:24])}, the format fixes 64/32/32"
    if size % page_size:
        return f"file size {size} is not a whole number of {page_size}-byte pages"
    (pages,) = struct.unpack_from(">I", header, 28)
    if header[24:28] == header[92:96] and pages > size // page_size:
        return f"the header counts {pages} pages, the file holds {size // page_size}: truncated"
    (encoding,) = struct.unpack_from(">I", header, 56)
    if encoding != 1:
        return f"text encoding {encoding}, this code writes UTF-8 (1)"
    return None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _probe_problem(conn: sqlite3.Connection) -> str | None:
    """Read the first and last entry of every b-tree and the totals row; what is wrong, or None.

    Each read descends from the root to one leaf, so this costs the depth of each tree in
    page reads. SQLITE_CORRUPT from any of them propagates to the caller.
    """
    objects = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type IN ('table', 'index') AND rootpage > 0"
    ).fetchall()
    if not objects:
        return None  # no schema yet (created right after), as the whole-file check would also pass it
    tables = {name: str(sql or "") for kind, name, _, sql in objects if kind == "table"}
    missing = [name for name in _REQUIRED_TABLES if name not in tables]
    if missing:
        return f"tables missing: {', '.join(missing)}"
    ends: dict[str, tuple[int | None, int | None]] = {}
    for name, sql in tables.items():
        table = _quoted(name)
        if "WITHOUT ROWID" in sql.upper():
            conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
            continue
        first = conn.execute(f"SELECT rowid FROM {table} ORDER BY rowid LIMIT 1").fetchone()
        last = conn.execute(f"SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT 1").fetchone()
        ends[name] = (None if first is None else first[0], None if last is None else last[0])
    for kind, name, table_name, _ in objects:
        if kind == "index":
            _probe_index(conn, name, table_name)
    row = conn.execute("SELECT depth, bytes FROM totals WHERE id = 1").fetchone()
    if row is None:
        return "the totals row is missing"
    depth, nbytes = row
    if not isinstance(depth, int) or not isinstance(nbytes, int) or depth < 0 or nbytes < 0:
        return f"totals row holds depth {depth!r}, bytes {nbytes!r}"
    first, last = ends["taps"]
    if (depth == 0) != (first is None):
        return f"totals say {depth} taps queued, the taps table {'is empty' if first is None else 'is not'}"
    if first is not None and last is not None and depth > last - first + 1:
        return f"totals say {depth} taps queued, more than the sequence range {first}..{last} holds"
    return None


def _probe_index(conn: sqlite3.Connection, index: str, table: str) -> None:
    """Read the first and last entry of one index, when that is a walk down its edges.

    An index on an expression, or one whose order the planner would sort again (a full
    scan), is left to the whole-file check.
    """
    keys = [row for row in conn.execute(f"PRAGMA index_xinfo({_quoted(index)})").fetchall() if row[5]]
    if not keys or any(row[2] is None for row in keys):
        return
    columns = ", ".join(_quoted(row[2]) for row in keys)
    for reverse in (False, True):
        order = ", ".join(
            f"{_quoted(row[2])} COLLATE {_quoted(row[4])} {'DESC' if bool(row[3]) != reverse else 'ASC'}"
            for row in keys
        )
        query = f"SELECT {columns} FROM {_quoted(table)} INDEXED BY {_quoted(index)} ORDER BY {order} LIMIT 1"
        plan = " ".join(str(step[3]) for step in conn.execute(f"EXPLAIN QUERY PLAN {query}").fetchall())
        if "TEMP B-TREE" in plan:
            return
        conn.execute(query).fetchall()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
