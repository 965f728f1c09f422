"""The clean-shutdown marker and what each start checks: cheap checks after a clean stop, the
whole-file check after an unclean one, corruption detected and the file moved aside in both.

Pages are located with SQLite's own dbstat table, so a test damages exactly the page it means
(a root, an edge leaf, a leaf in the middle) rather than some byte range that happens to hold it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reader.uplink.errors import QueueCorruptError, QueueStorageError
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from tests.support.taps import tap_record

ROOT = Path(__file__).resolve().parents[2]
MARKER_SUFFIX = "-clean"  # operators and the documentation name the file, so it is pinned here
TAPS = 3000


def _settings(state_dir: Path, **overrides: object) -> QueueSettings:
    return QueueSettings(path=state_dir / "q.sqlite3", min_free_bytes=0, **overrides)  # type: ignore[arg-type]


def _fill(settings: QueueSettings, n: int = TAPS) -> None:
    """A queue with `n` taps, closed cleanly."""
    queue = TapQueue(settings)
    with queue.transaction() as conn:  # one commit: thousands of FULL commits would dominate the test
        for i in range(n):
            body = json.dumps(tap_record(i))
            conn.execute(
                "INSERT INTO taps (terminal_id, tap_id, body, size, enqueued_at) VALUES (?, ?, ?, ?, 0)",
                ("VAL-000123", f"0000-{i:010d}", body, len(body)),
            )
    queue.close()


def _marker(settings: QueueSettings) -> Path:
    return settings.path.with_name(settings.path.name + MARKER_SUFFIX)


def _leaf_pages(path: Path, name: str) -> list[int]:
    """Leaf pages of one b-tree in key order (dbstat's path sorts left to right)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path", (name,)
        ).fetchall()
    finally:
        conn.close()
    return [row[0] for row in rows]


def _smash_page(path: Path, pageno: int) -> None:
    """Overwrite one whole page with a pattern no b-tree page can hold (page type 0xA5).

    The file's mtime is put back, as with damage no write made (a bad sector, bit rot):
    the clean marker still matches, so the cheap checks are what stands in the way.
    """
    page_size = 4096
    before = path.stat()
    with path.open("r+b") as f:
        f.seek((pageno - 1) * page_size)
        f.write(b"\xa5" * page_size)
        f.flush()
        os.fsync(f.fileno())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _kill_while_open(settings: QueueSettings) -> None:
    """Open the queue in a child, enqueue one tap, and SIGKILL it while the queue is open."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from reader.log import configure_logging
        from reader.uplink.queue import TapQueue
        from reader.uplink.settings import QueueSettings
        from tests.support.taps import tap_record
        configure_logging("error")
        queue = TapQueue(QueueSettings(path=Path({str(settings.path)!r}), min_free_bytes=0))
        queue.enqueue(tap_record(time.time_ns() % 10**9, run=9))  # an id no other child used
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL


# -- the marker ----------------------------------------------------------------------------


def test_clean_close_leaves_a_marker_that_the_next_open_takes(state_dir: Path) -> None:
    settings = _settings(state_dir)
    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("new", "none")
    queue.enqueue(tap_record(1))
    assert not _marker(settings).exists()
    queue.close()
    assert _marker(settings).exists()
    assert not Path(f"{settings.path}-wal").exists()  # SQLite checkpointed and removed it

    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("clean", "cheap")
    assert not _marker(settings).exists()  # gone before the first write: a crash now reads as unclean
    assert queue.status().depth == 1
    queue.close()


def test_kill_9_leaves_no_marker_and_the_next_start_checks_the_whole_file(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings, 10)
    _kill_while_open(settings)
    assert not _marker(settings).exists()
    assert Path(f"{settings.path}-wal").exists()

    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("unclean", "quick_check")
    assert queue.moved_aside is None
    assert queue.status().depth == 11  # the killed child's tap was committed
    queue.close()


def test_a_marker_beside_wal_frames_is_not_trusted(state_dir: Path) -> None:
    # Another process that opened the file while this one was closing, then was killed:
    # the marker it did not see still names the database file, whose changes sit in the WAL.
    settings = _settings(state_dir)
    _fill(settings, 10)
    marker = _marker(settings).read_bytes()
    _kill_while_open(settings)
    _marker(settings).write_bytes(marker)
    assert Path(f"{settings.path}-wal").stat().st_size > 0
    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("unclean", "quick_check")
    assert queue.status().depth == 11
    queue.close()


def test_full_setting_runs_integrity_check_after_an_unclean_stop(state_dir: Path) -> None:
    settings = _settings(state_dir, integrity_check="full")
    _fill(settings, 10)
    _kill_while_open(settings)
    queue = TapQueue(settings)
    assert queue.open_check == "integrity_check"
    queue.close()


def test_a_file_written_after_the_clean_close_reads_as_unclean(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings, 10)
    other = sqlite3.connect(settings.path, isolation_level=None)
    other.execute("UPDATE totals SET errors = errors + 1")
    other.close()  # a clean close of a writer that knows nothing of the marker
    queue = TapQueue(settings)
    assert queue.previous_stop == "unclean"
    queue.close()


def test_a_restored_copy_does_not_inherit_the_marker(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings, 10)
    copy = state_dir / "copy"
    copy.write_bytes(settings.path.read_bytes())
    os.replace(copy, settings.path)  # same bytes, another file
    queue = TapQueue(settings)
    assert queue.previous_stop == "unclean"
    queue.close()


def test_an_unreadable_marker_reads_as_unclean_and_is_removed(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings, 10)
    _marker(settings).write_text("not json")
    queue = TapQueue(settings)
    assert queue.previous_stop == "unclean"
    assert not _marker(settings).exists()
    queue.close()


def test_no_marker_while_another_writer_still_has_the_file_open(state_dir: Path) -> None:
    settings = _settings(state_dir)
    first = TapQueue(settings)
    second = TapQueue(settings)
    second.enqueue(tap_record(1))
    second.close()
    assert not _marker(settings).exists()  # `first` is still open: this close proves nothing
    first.enqueue(tap_record(2))
    first.close()
    assert _marker(settings).exists()


def test_readonly_view_neither_takes_nor_leaves_the_marker(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings, 10)
    marker = _marker(settings).read_bytes()
    view = TapQueue(settings, readonly=True)
    assert view.status().depth == 10
    view.close()
    assert _marker(settings).read_bytes() == marker
    assert Path(f"{settings.path}-wal").stat().st_size == 0  # what a read-only connection leaves
    queue = TapQueue(settings)
    assert queue.previous_stop == "clean"
    queue.close()


def test_before_ready_setting_checks_the_whole_file_after_a_clean_stop_too(state_dir: Path) -> None:
    settings = _settings(state_dir, after_clean_stop="before_ready")
    _fill(settings, 10)
    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("clean", "quick_check")
    queue.close()


# -- corruption after an unclean stop ------------------------------------------------------------


def test_corrupt_middle_page_after_an_unclean_stop_is_moved_aside_before_ready(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings)
    leaves = _leaf_pages(settings.path, "taps")
    _kill_while_open(settings)
    _smash_page(settings.path, leaves[len(leaves) // 2])

    with pytest.raises(QueueCorruptError, match="quick_check"):
        TapQueue(settings, on_corrupt="raise")
    # The check's own connection folded the killed child's WAL into the file when it closed.
    corrupted = settings.path.read_bytes()
    queue = TapQueue(settings)
    assert queue.previous_stop == "unclean"
    assert queue.moved_aside is not None
    assert queue.moved_aside.read_bytes() == corrupted
    assert [i.kind for i in queue.status().incidents] == ["corrupt_file_moved_aside"]
    queue.close()


# -- corruption after a clean stop ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["taps root", "first taps leaf", "last taps leaf", "last index leaf"])
def test_corrupt_edge_page_after_a_clean_stop_is_found_by_the_cheap_checks(state_dir: Path, where: str) -> None:
    settings = _settings(state_dir, after_clean_stop="cheap")
    _fill(settings)
    conn = sqlite3.connect(settings.path)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'taps'").fetchone()[0]
    conn.close()
    page = {
        "taps root": root,
        "first taps leaf": _leaf_pages(settings.path, "taps")[0],
        "last taps leaf": _leaf_pages(settings.path, "taps")[-1],
        "last index leaf": _leaf_pages(settings.path, "sqlite_autoindex_taps_1")[-1],
    }[where]
    _smash_page(settings.path, page)
    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("clean", "cheap")
    assert queue.moved_aside is not None
    assert queue.status().incidents[0].kind == "corrupt_file_moved_aside"
    assert "cheap checks" in queue.status().incidents[0].detail
    queue.close()


def test_truncated_file_after_a_clean_stop_is_found_by_the_header_check(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings)
    size = settings.path.stat().st_size
    os.truncate(settings.path, size - 8 * 4096)
    queue = TapQueue(settings, on_corrupt="move_aside")
    # The marker names the old size, so this reads as unclean; the header check must catch it alone too.
    assert queue.moved_aside is not None
    queue.close()
    _fill(settings)
    identity = json.loads(_marker(settings).read_text())
    os.truncate(settings.path, settings.path.stat().st_size - 8 * 4096)
    identity.update(size=settings.path.stat().st_size, mtime_ns=settings.path.stat().st_mtime_ns)
    _marker(settings).write_text(json.dumps(identity))  # a marker that agrees with the damaged file
    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("clean", "cheap")
    assert queue.moved_aside is not None
    assert "header: the header counts" in queue.status().incidents[0].detail
    queue.close()


def test_corrupt_middle_page_after_a_clean_stop_is_found_in_the_background_then_moved_aside_at_the_next_start(
    state_dir: Path,
) -> None:
    settings = _settings(state_dir)
    _fill(settings)
    leaves = _leaf_pages(settings.path, "taps")
    _smash_page(settings.path, leaves[len(leaves) // 2])

    queue = TapQueue(settings)
    # Honestly: the cheap checks before READY do not read the middle of the tree.
    assert (queue.previous_stop, queue.open_check) == ("clean", "cheap")
    assert queue.moved_aside is None
    assert queue.wait_for_background_check(30)
    assert queue.background_problem is not None and "quick_check" in queue.background_problem
    assert [i.kind for i in queue.status().incidents] == ["corruption_found_in_service"]
    queue.enqueue(tap_record(TAPS + 1))  # new taps still go to the right edge, which is sound
    queue.close()
    assert not _marker(settings).exists()  # so the next start checks the whole file

    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check) == ("unclean", "quick_check")
    assert queue.moved_aside is not None
    assert queue.status().incidents[0].kind == "corrupt_file_moved_aside"
    queue.close()


def test_a_corrupt_page_met_while_running_refuses_the_tap_as_out_of_service(state_dir: Path) -> None:
    settings = _settings(state_dir, after_clean_stop="cheap")
    _fill(settings)
    index_leaves = _leaf_pages(settings.path, "sqlite_autoindex_taps_1")
    taps_leaves = _leaf_pages(settings.path, "taps")
    middle = index_leaves[len(index_leaves) // 2]
    with settings.path.open("rb") as f:
        f.seek((middle - 1) * 4096)
        page = f.read(4096)
    at = page.index(b"0000-")
    key_on_page = page[at : at + 15].decode("ascii")  # one tap id the smashed index page holds
    _smash_page(settings.path, middle)
    _smash_page(settings.path, taps_leaves[len(taps_leaves) // 2])

    queue = TapQueue(settings)
    assert queue.moved_aside is None and queue.open_check == "cheap"
    queue.enqueue(tap_record(TAPS + 1))  # the edges are sound
    # A tap id that sorts next to one on the smashed index page must read that page.
    with pytest.raises(QueueStorageError, match="malformed"):
        queue.enqueue({**tap_record(TAPS + 2), "tap_id": key_on_page + "x"})
    assert isinstance(queue.out_of_service, QueueStorageError)
    # A sender reading across the smashed taps page gets SQLITE_CORRUPT as an sqlite3 error,
    # which the uplinks catch and back off on.
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        list(queue.iter_taps())
    queue.close()


# -- the background check itself -------------------------------------------------------------


def test_background_check_passes_a_sound_file_and_the_clean_stop_is_kept(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings)
    queue = TapQueue(settings)
    assert queue.wait_for_background_check(30)
    assert queue.background_problem is None
    assert queue.status().incidents == []
    queue.close()
    assert _marker(settings).exists()


def test_close_stops_a_running_background_check(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings, 30_000)
    queue = TapQueue(settings)
    queue.close()
    assert queue.wait_for_background_check(0)  # finished (interrupted or done) before close returned
    assert queue.background_problem is None  # an interrupted check is no finding
    assert _marker(settings).exists()
    queue = TapQueue(settings)
    assert queue.previous_stop == "clean"
    queue.close()


def test_no_background_check_after_an_unclean_stop_or_when_switched_off(state_dir: Path) -> None:
    settings = _settings(state_dir, after_clean_stop="cheap")
    _fill(settings, 10)
    queue = TapQueue(settings)
    assert queue.open_check == "cheap" and queue._background is None
    queue.close()
    _kill_while_open(settings)
    queue = TapQueue(_settings(state_dir))
    assert queue.open_check == "quick_check" and queue._background is None  # it already checked everything
    queue.close()


def test_whole_file_check_after_an_unclean_stop_reads_the_file_ahead(state_dir: Path) -> None:
    settings = _settings(state_dir)
    _fill(settings)
    _kill_while_open(settings)
    on_disk = settings.path.stat().st_size + Path(f"{settings.path}-wal").stat().st_size
    queue = TapQueue(settings)
    assert queue.open_check == "quick_check"
    assert queue.prefetched_bytes == on_disk
    queue.close()
    _kill_while_open(settings)
    queue = TapQueue(_settings(state_dir, prefetch_before_check=False))
    assert queue.open_check == "quick_check" and queue.prefetched_bytes == 0
    queue.close()
    queue = TapQueue(settings)  # clean stop: the cheap checks read no file ahead
    assert queue.open_check == "cheap" and queue.prefetched_bytes == 0
    queue.close()
