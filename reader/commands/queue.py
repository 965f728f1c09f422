"""`sscard queue`: look into the tap queue, export it, and put poison taps back in line.

status, list and export open the file read-only, so they are safe while the daemon runs;
retry-poison writes (one short transaction) and is safe too. A file that is not a queue (not
SQLite, a directory, unreadable) is named in one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from reader.uplink.errors import QueueCorruptError, QueueMissingError, QueueStorageError
from reader.uplink.queue import QueuedTap, QueueStatus, TapQueue
from reader.uplink.settings import QueueSettings

DB_ENV = "SSCARD_QUEUE_DB"
QUEUE_ERRORS = (QueueMissingError, QueueCorruptError, QueueStorageError, sqlite3.DatabaseError)
"""What a file that is not a usable queue raises, on opening or on the first read."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `queue` and its subcommands."""
    parser = subparsers.add_parser("queue", help="inspect the durable tap queue")
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help=f"queue file (default: ${DB_ENV} or {QueueSettings().path})",
    )
    sub = parser.add_subparsers(dest="queue_command", required=True, metavar="ACTION")

    status = sub.add_parser("status", help="depth, age of the oldest tap, last delivery, errors")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_status)

    listing = sub.add_parser("list", help="queued taps, oldest first")
    listing.add_argument("--poison", action="store_true", help="list the poison taps instead")
    listing.add_argument("--limit", type=_non_negative, default=50, help="at most this many rows (0: all)")
    listing.set_defaults(func=_list)

    export = sub.add_parser("export", help="write the queued tap records as JSON lines")
    export.add_argument("file", help="output file, or - for standard output")
    export.add_argument("--poison", action="store_true", help="export the poison taps instead")
    export.set_defaults(func=_export)

    retry = sub.add_parser("retry-poison", help="put poison taps back in the queue")
    retry.add_argument("--seq", type=int, action="append", help="only this row (repeatable)")
    retry.set_defaults(func=_retry_poison)


def _db_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return Path(args.db)
    env = os.environ.get(DB_ENV)
    return Path(env) if env else QueueSettings().path


def _open(args: argparse.Namespace, *, readonly: bool) -> TapQueue:
    path = _db_path(args)
    if not path.exists():
        raise QueueMissingError(f"no queue at {path}")
    if not path.is_file():
        raise QueueMissingError(f"{path} is not a queue file (a directory or a device)")
    return TapQueue(QueueSettings(path=path), readonly=readonly, on_corrupt="raise")


def _fail(message: str) -> int:
    """One line on stderr: the queue's errors carry their kind as a prefix ("storage_error: ...")."""
    print(f"sscard queue: {message}", file=sys.stderr)
    return 1


def _reason(args: argparse.Namespace, exc: Exception) -> str:
    """The queue's own errors name the file; SQLite's do not."""
    if isinstance(exc, sqlite3.DatabaseError):
        return f"{_db_path(args)}: not a usable queue: {exc}"
    return str(exc)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative (0 means all)")
    return value


def _status(args: argparse.Namespace) -> int:
    try:
        with _open(args, readonly=True) as queue:
            status = queue.status()
    except QUEUE_ERRORS as exc:
        return _fail(_reason(args, exc))
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
    else:
        _print_status(status, sys.stdout)
    return 0


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return f"{stamp} ({_age(now - at)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _print_status(status: QueueStatus, out: TextIO) -> None:
    now = time.time()
    rows = [
        ("queue", status.path),
        (
            "depth",
            f"{status.depth} taps, {_size(status.bytes)} (bound {status.max_taps} taps, {_size(status.max_bytes)})",
        ),
        ("oldest", "-" if status.oldest_age_s is None else f"{_age(status.oldest_age_s)} old"),
        ("delivered", f"{status.delivered_total} in total, last {_when(status.last_delivery_at, now)}"),
        ("errors", f"{status.errors_total} in total, last {_when(status.last_error_at, now)}"),
    ]
    if status.last_error:
        rows.append(("last error", status.last_error))
    rows.append(("poison", str(status.poison)))
    rows += [("incident", f"{_when(i.at, now)} {i.kind}: {i.detail}") for i in status.incidents]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}", file=out)


def _row(tap: QueuedTap, now: float) -> str:
    return (
        f"{tap.seq:>8}  {tap.terminal_id:<16} {tap.tap_id:<36} {_age(now - tap.enqueued_at):>9}"
        f"  {tap.attempts:>3}  {tap.size:>6}"
    )


def _list(args: argparse.Namespace) -> int:
    now = time.time()
    limit = args.limit if args.limit > 0 else None
    try:
        with _open(args, readonly=True) as queue:
            header = f"{'seq':>8}  {'terminal':<16} {'tap id':<36} {'age':>9}  {'try':>3}  {'bytes':>6}"
            print(header + ("  reason" if args.poison else ""))
            shown = 0
            if args.poison:
                for poisoned in queue.iter_poison():
                    if limit is not None and shown >= limit:
                        break
                    print(f"{_row(poisoned.tap, now)}  {poisoned.reason}")
                    shown += 1
            else:
                for tap in queue.iter_taps():
                    if limit is not None and shown >= limit:
                        break
                    print(_row(tap, now))
                    shown += 1
    except QUEUE_ERRORS as exc:
        return _fail(_reason(args, exc))
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        with _open(args, readonly=True) as queue:
            if args.file == "-":
                count = _write_lines(queue, args.poison, sys.stdout)
            else:
                with open(args.file, "w", encoding="utf-8") as out:
                    count = _write_lines(queue, args.poison, out)
    except QUEUE_ERRORS as exc:
        return _fail(_reason(args, exc))
    except OSError as exc:
        return _fail(f"cannot write {args.file}: {exc}")
    print(f"exported {count} tap records", file=sys.stderr)
    return 0


def _write_lines(queue: TapQueue, poison: bool, out: TextIO) -> int:
    """Each record exactly as queued (one JSON object per line)."""
    count = 0
    taps: Iterator[QueuedTap] = (p.tap for p in queue.iter_poison()) if poison else queue.iter_taps()
    for tap in taps:
        out.write(tap.body + "\n")
        count += 1
    return count


def _retry_poison(args: argparse.Namespace) -> int:
    try:
        with _open(args, readonly=False) as queue:
            moved = queue.retry_poison(args.seq)
            left = queue.status().poison
    except QUEUE_ERRORS as exc:
        return _fail(_reason(args, exc))
    print(f"{moved} taps back in the queue, {left} still set aside")
    return 0
