"""The queue's bounds and pages at their edges: where a one-character change loses or refuses taps.

A bound that refuses one tap too early puts a validator out of service with room left; one
that refuses too late lets the file grow past what was sized for it. Batches must never
exceed their count or byte limit, paging must not skip or repeat a row, and the figures an
operator reads (depth, oldest age) must be the queue's own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reader.uplink.errors import (
    DiskFullError,
    DuplicateTapError,
    QueueCorruptError,
    QueueFullError,
    QueueMissingError,
    QueueStorageError,
    TapRecordError,
    UplinkError,
)
from reader.uplink.queue import TapQueue, _header_problem, _probe_problem
from reader.uplink.settings import QueueSettings
from tests.support.taps import tap_record


def sized(path: Path, **bounds: int) -> TapQueue:
    return TapQueue(QueueSettings(path=path / "queue.sqlite3", min_free_bytes=0, **bounds))  # type: ignore[arg-type]


def record_size(state_dir: Path) -> int:
    """The stored size of one tap_record (all test records have the same size)."""
    with sized(state_dir / "probe") as probe:
        probe.enqueue(tap_record(0))
        return probe.status().bytes


def test_the_byte_bound_admits_a_record_that_reaches_it_exactly(state_dir: Path) -> None:
    size = record_size(state_dir)
    with sized(state_dir, max_bytes=2 * size) as queue:
        queue.enqueue(tap_record(1))
        queue.check_accepting()
        queue.enqueue(tap_record(2))  # exactly at the bound
        assert queue.status().bytes == 2 * size
        with pytest.raises(QueueFullError):
            queue.enqueue(tap_record(3))
        assert queue.status().depth == 2


def test_check_accepting_refuses_only_when_even_one_byte_would_not_fit(state_dir: Path) -> None:
    size = record_size(state_dir)
    with sized(state_dir, max_bytes=size + 1) as queue:
        queue.enqueue(tap_record(1))
        queue.check_accepting()  # one byte left: a tap might still fit
    with sized(state_dir / "full", max_bytes=size) as queue:
        queue.enqueue(tap_record(1))
        with pytest.raises(QueueFullError):
            queue.check_accepting()


def test_a_batch_keeps_to_its_byte_limit_exactly(state_dir: Path) -> None:
    size = record_size(state_dir)
    with sized(state_dir) as queue:
        for n in range(5):
            queue.enqueue(tap_record(n))
        assert len(queue.batch(10, 3 * size)) == 3
        assert len(queue.batch(10, 3 * size - 1)) == 2
        assert len(queue.batch(10, 1)) == 1  # an oversized record still moves, alone


def test_a_batch_keeps_to_its_count_with_rows_skipped(state_dir: Path) -> None:
    with sized(state_dir) as queue:
        seqs = [queue.enqueue(tap_record(n)) for n in range(6)]
        batch = queue.batch(2, skip={seqs[0]})
        assert [tap.seq for tap in batch] == seqs[1:3]


def test_ack_and_set_aside_of_nothing_count_nothing(state_dir: Path) -> None:
    with sized(state_dir) as queue:
        queue.enqueue(tap_record(1))
        assert queue.ack([]) == 0
        assert queue.set_aside([], "nothing") == 0
        assert queue.status().depth == 1


def test_paged_reads_return_every_row_once_in_order(state_dir: Path) -> None:
    with sized(state_dir) as queue:
        seqs = [queue.enqueue(tap_record(n)) for n in range(7)]
        assert [tap.seq for tap in queue.iter_taps(page=2)] == seqs
        queue.set_aside(seqs[:5], "refused")
        assert [p.tap.seq for p in queue.iter_poison(page=2)] == seqs[:5]
        assert [p.reason for p in queue.iter_poison(page=2)] == ["refused"] * 5


def test_the_oldest_age_is_measured_on_the_queue_clock(state_dir: Path) -> None:
    now = [1_000_000.0]
    queue = TapQueue(QueueSettings(path=state_dir / "queue.sqlite3", min_free_bytes=0), clock=lambda: now[0])
    try:
        assert queue.status().oldest_age_s is None
        queue.enqueue(tap_record(1))
        now[0] += 42.5
        assert queue.status().oldest_age_s == 42.5
        now[0] -= 100.0  # the clock stepped back: an age is never negative
        assert queue.status().oldest_age_s == 0.0
    finally:
        queue.close()


# == the file's health at open: header, schema probes, whole-file check, moving aside =============
#
# A queue file that cannot be trusted must not take a debit's record: each check below is what
# stands between a damaged file and a tap recorded into it. The problem text is stored in the
# new file's incident table (`sscard queue status` shows it), so it is pinned too.
#
# Database header offsets are those of the SQLite file format, https://www.sqlite.org/fileformat2.html
# section 1.3 "The Database Header": 0 magic "SQLite format 3\0" (16 bytes), 16 page size (2 bytes
# BE, 1 meaning 65536), 21..23 payload fractions 64/32/32, 24 file change counter, 28 database size
# in pages, 56 text encoding (1 = UTF-8), 92 version-valid-for (the page count is valid only when
# it equals the change counter).

PAGE = 4096  # SQLite's default page size, which the queue keeps


def settings_at(directory: Path, **overrides: object) -> QueueSettings:
    return QueueSettings(path=directory / "q.sqlite3", min_free_bytes=0, **overrides)  # type: ignore[arg-type]


def fill(settings: QueueSettings, n: int) -> None:
    """A queue of `n` taps, closed cleanly (one commit: n FULL commits would only cost time)."""
    queue = TapQueue(settings)
    with queue.transaction() as conn:
        for i in range(n):
            body = json.dumps(tap_record(i))
            conn.execute(
                "INSERT INTO taps (terminal_id, tap_id, body, size, enqueued_at) VALUES (?, ?, ?, ?, 0)",
                ("VAL-000123", f"0000-{i:010d}", body, len(body)),
            )
    queue.close()


def marker_of(settings: QueueSettings) -> Path:
    return settings.path.with_name(settings.path.name + "-clean")


def restamp_marker(settings: QueueSettings) -> None:
    """Make the clean marker agree with the file as it is now (damage that no write made)."""
    st = settings.path.stat()
    marker_of(settings).write_text(
        json.dumps({"format": 1, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    )


def leaf_pages(path: Path, name: str) -> list[int]:
    """Leaf pages of one b-tree in key order (SQLite's dbstat virtual table)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path", (name,)
        ).fetchall()
    finally:
        conn.close()
    return [row[0] for row in rows]


def smash(path: Path, pageno: int) -> None:
    """Overwrite one page with bytes no b-tree page holds, keeping the mtime (a bad sector)."""
    before = path.stat()
    with path.open("r+b") as f:
        f.seek((pageno - 1) * PAGE)
        f.write(b"\xa5" * PAGE)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def crash_image(settings: QueueSettings, target: Path, n: int = 10**6) -> QueueSettings:
    """The files a power cut leaves: the database and its WAL, copied while the queue is open."""
    queue = TapQueue(settings)
    queue.enqueue(tap_record(n))
    target.mkdir()
    copied = settings_at(target)
    shutil.copyfile(settings.path, copied.path)
    shutil.copyfile(f"{settings.path}-wal", f"{copied.path}-wal")
    queue.close()
    return copied


def write_header(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture
def sound_file(state_dir: Path) -> Path:
    """A closed queue file of several pages with taps in it."""
    settings = settings_at(state_dir)
    fill(settings, 50)
    marker_of(settings).unlink()
    return settings.path


def test_a_sound_header_passes_and_an_empty_file_is_a_database_with_no_pages(sound_file: Path) -> None:
    assert _header_problem(sound_file) is None
    sound_file.write_bytes(b"")
    assert _header_problem(sound_file) is None


def test_a_header_cut_short_or_without_the_magic_string_is_refused(sound_file: Path) -> None:
    data = sound_file.read_bytes()
    sound_file.write_bytes(data[:99])
    assert _header_problem(sound_file) == "99 bytes, shorter than a database header"
    sound_file.write_bytes(b"SQLite format 4\x00" + data[16:])
    assert _header_problem(sound_file) == "no SQLite magic string"


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        pytest.param(0, "page size 0", id="zero"),
        pytest.param(256, "page size 256", id="below-512"),
        pytest.param(511, "page size 511", id="511"),
        pytest.param(4095, "page size 4095", id="not-a-power-of-two"),
        pytest.param(1, "file size {size} is not a whole number of 65536-byte pages", id="1-means-65536"),
    ],
)
def test_a_page_size_the_format_does_not_allow_is_refused(sound_file: Path, field: int, problem: str) -> None:
    write_header(sound_file, 16, struct.pack(">H", field))
    assert _header_problem(sound_file) == problem.format(size=sound_file.stat().st_size)


def test_the_smallest_page_size_is_allowed(sound_file: Path) -> None:
    # 512-byte pages: the file (a whole number of 4096-byte pages) is a whole number of them too.
    write_header(sound_file, 16, struct.pack(">H", 512))
    write_header(sound_file, 28, struct.pack(">I", 1))
    assert _header_problem(sound_file) is None


def test_payload_fractions_and_text_encoding_are_checked(sound_file: Path) -> None:
    write_header(sound_file, 21, bytes([0x41, 0x20, 0x20]))
    assert _header_problem(sound_file) == "payload fractions (65, 32, 32), the format fixes 64/32/32"
    write_header(sound_file, 21, bytes([0x40, 0x20, 0x20]))
    write_header(sound_file, 56, struct.pack(">I", 2))
    assert _header_problem(sound_file) == "text encoding 2, this code writes UTF-8 (1)"


def test_a_file_of_part_pages_or_fewer_pages_than_its_header_counts_is_refused(sound_file: Path) -> None:
    size = sound_file.stat().st_size
    pages = size // PAGE
    with sound_file.open("ab") as f:
        f.write(b"\0" * 100)
    assert _header_problem(sound_file) == f"file size {size + 100} is not a whole number of {PAGE}-byte pages"
    os.truncate(sound_file, size)
    assert _header_problem(sound_file) is None  # exactly the pages the header counts
    os.truncate(sound_file, size - PAGE)
    assert _header_problem(sound_file) == f"the header counts {pages} pages, the file holds {pages - 1}: truncated"
    # The count is trusted only when version-valid-for matches the change counter.
    counter = struct.unpack(">I", sound_file.read_bytes()[24:28])[0]
    write_header(sound_file, 92, struct.pack(">I", counter + 1))
    assert _header_problem(sound_file) is None


def probe(path: Path, *statements: str) -> str | None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
        return _probe_problem(conn)
    finally:
        conn.close()


def test_the_probes_pass_a_sound_file_and_an_empty_one(sound_file: Path, state_dir: Path) -> None:
    assert probe(sound_file) is None
    assert probe(state_dir / "empty.sqlite3") is None  # no schema yet: created right after


def test_the_probes_name_the_tables_missing(sound_file: Path) -> None:
    assert probe(sound_file, "DROP TABLE poison", "DROP TABLE incidents") == "tables missing: poison, incidents"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param("DELETE FROM totals", "the totals row is missing", id="no-row"),
        pytest.param("UPDATE totals SET depth = -1", "totals row holds depth -1, bytes {bytes}", id="negative-depth"),
        pytest.param("UPDATE totals SET bytes = -1", "totals row holds depth 50, bytes -1", id="negative-bytes"),
        pytest.param("UPDATE totals SET depth = 'x'", "totals row holds depth 'x', bytes {bytes}", id="text-depth"),
        pytest.param("UPDATE totals SET bytes = 1.5", "totals row holds depth 50, bytes 1.5", id="real-bytes"),
        pytest.param("UPDATE totals SET depth = 0", "totals say 0 taps queued, the taps table is not", id="zero"),
        pytest.param(
            "UPDATE totals SET depth = 51",
            "totals say 51 taps queued, more than the sequence range 1..50 holds",
            id="beyond-the-range",
        ),
    ],
)
def test_the_probes_refuse_totals_that_disagree_with_the_taps(sound_file: Path, change: str, problem: str) -> None:
    nbytes = sqlite3.connect(sound_file).execute("SELECT bytes FROM totals").fetchone()[0]
    assert probe(sound_file, change) == problem.format(bytes=nbytes)


def test_the_probes_accept_totals_at_the_edges_of_the_taps(sound_file: Path) -> None:
    assert probe(sound_file, "UPDATE totals SET depth = 50") is None  # every seq of 1..50 queued
    assert probe(sound_file, "DELETE FROM taps WHERE seq > 1", "UPDATE totals SET depth = 1") is None
    assert (
        probe(sound_file, "DELETE FROM taps", "UPDATE totals SET depth = 3")
        == "totals say 3 taps queued, the taps table is empty"
    )


def test_the_probes_read_tables_and_indexes_of_every_kind(sound_file: Path) -> None:
    """Tables and indexes an operator or a later version may add must not break the cheap checks."""
    assert (
        probe(
            sound_file,
            'CREATE TABLE "we""ird" (k TEXT PRIMARY KEY, v) WITHOUT ROWID',
            'INSERT INTO "we""ird" VALUES (\'a\', 1)',
            "CREATE TABLE notes (a TEXT, b INTEGER)",
            "INSERT INTO notes VALUES ('x', 1), ('Y', 2)",
            "CREATE INDEX notes_ab ON notes (a COLLATE NOCASE DESC, b)",
            "CREATE INDEX notes_expr ON notes (b + 1)",
            'CREATE INDEX "odd ""name""" ON notes (b DESC)',
        )
        is None
    )


@pytest.mark.parametrize("tree", ["taps", "sqlite_autoindex_taps_1"])
@pytest.mark.parametrize("end", [0, -1])
def test_a_damaged_edge_page_after_a_clean_stop_is_moved_aside_before_ready(
    state_dir: Path, tree: str, end: int
) -> None:
    settings = settings_at(state_dir, after_clean_stop="cheap")
    fill(settings, 600)
    smash(settings.path, leaf_pages(settings.path, tree)[end])
    queue = TapQueue(settings)
    try:
        assert (queue.previous_stop, queue.open_check) == ("clean", "cheap")
        assert queue.moved_aside is not None
        (incident,) = queue.status().incidents
        assert incident.kind == "corrupt_file_moved_aside"
        assert incident.detail.startswith(f"{queue.moved_aside}: cheap checks: ")
        assert queue.status().depth == 0  # a new, empty file
    finally:
        queue.close()


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        pytest.param("UPDATE totals SET depth = 7", "totals say 7 taps queued, the taps table is empty", id="totals"),
        pytest.param("DROP TABLE incidents", "tables missing: incidents", id="schema"),
    ],
)
def test_what_the_cheap_checks_find_is_recorded_as_the_incident(state_dir: Path, damage: str, detail: str) -> None:
    settings = settings_at(state_dir, after_clean_stop="cheap")
    TapQueue(settings).close()
    db = sqlite3.connect(settings.path, isolation_level=None)
    db.execute(damage)
    db.close()
    restamp_marker(settings)
    queue = TapQueue(settings, clock=lambda: 1_700_000_000.0)
    try:
        assert queue.moved_aside == settings.path.with_name("q.sqlite3.corrupt-20231114T221320")
        (incident,) = queue.status().incidents
        assert (incident.at, incident.kind, incident.detail) == (
            1_700_000_000.0,
            "corrupt_file_moved_aside",
            f"{queue.moved_aside}: {detail}",
        )
    finally:
        queue.close()


def test_a_truncated_file_after_a_clean_stop_is_caught_by_the_header(state_dir: Path) -> None:
    settings = settings_at(state_dir, after_clean_stop="cheap")
    fill(settings, 50)
    pages = settings.path.stat().st_size // PAGE
    os.truncate(settings.path, (pages - 2) * PAGE)
    restamp_marker(settings)
    queue = TapQueue(settings)
    try:
        assert queue.previous_stop == "clean" and queue.moved_aside is not None
        assert queue.status().incidents[0].detail == (
            f"{queue.moved_aside}: header: the header counts {pages} pages, the file holds {pages - 2}: truncated"
        )
    finally:
        queue.close()


def test_what_each_kind_of_start_checks(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    queue = TapQueue(settings)
    assert (queue.previous_stop, queue.open_check, queue.moved_aside) == ("new", "none", None)
    assert queue.prefetched_bytes == 0
    assert queue.background_problem is None and queue.wait_for_background_check(0)
    queue.close()
    for after, check in [("cheap", "cheap"), ("before_ready", "quick_check"), ("background", "cheap")]:
        size = settings.path.stat().st_size
        queue = TapQueue(settings_at(state_dir, after_clean_stop=after))
        assert (queue.previous_stop, queue.open_check) == ("clean", check), after
        assert queue.wait_for_background_check(30)
        # A check that READY waits for reads the file ahead; the cheap checks read a few pages.
        assert queue.prefetched_bytes == (0 if check == "cheap" else size), after
        assert queue.moved_aside is None
        queue.close()
    queue = TapQueue(settings_at(state_dir, after_clean_stop="before_ready", integrity_check="full"))
    assert queue.open_check == "integrity_check"
    queue.close()


def test_the_whole_file_check_after_a_crash_reads_the_file_and_its_wal_ahead(state_dir: Path) -> None:
    settings = settings_at(state_dir / "live")
    fill(settings, 300)
    image = crash_image(settings, state_dir / "image")
    on_disk = image.path.stat().st_size + Path(f"{image.path}-wal").stat().st_size
    queue = TapQueue(image)
    try:
        assert (queue.previous_stop, queue.open_check) == ("unclean", "quick_check")
        assert queue.prefetched_bytes == on_disk
        assert queue.moved_aside is None and queue.status().depth == 301  # the WAL's tap too
    finally:
        queue.close()
    second = crash_image(settings, state_dir / "image2", 10**6 + 1)
    queue = TapQueue(settings_at(second.path.parent, prefetch_before_check=False, integrity_check="full"))
    try:
        assert (queue.open_check, queue.prefetched_bytes) == ("integrity_check", 0)
    finally:
        queue.close()


@pytest.mark.parametrize(("mode", "pragma"), [("quick", "quick_check"), ("full", "integrity_check")])
def test_a_damaged_middle_page_after_a_crash_is_moved_aside(state_dir: Path, mode: str, pragma: str) -> None:
    settings = settings_at(state_dir / "live")
    fill(settings, 600)
    image = crash_image(settings, state_dir / "image")
    leaves = leaf_pages(settings.path, "taps")
    smash(image.path, leaves[len(leaves) // 2])
    queue = TapQueue(settings_at(image.path.parent, integrity_check=mode), clock=lambda: 1_700_000_000.0)
    try:
        target = image.path.with_name("q.sqlite3.corrupt-20231114T221320")
        assert queue.moved_aside == target
        assert target.exists()  # kept, never deleted (the check's own connection folded the WAL in)
        detail = queue.status().incidents[0].detail
        assert detail.startswith(f"{target}: {pragma}: ")
        assert queue.status().depth == 0
    finally:
        queue.close()


def test_a_file_moved_aside_takes_the_files_beside_it(state_dir: Path) -> None:
    """A WAL or shared-memory file left beside the new file would be read as part of it.

    After a clean stop a read-only view may have left an empty WAL and its -shm; a header the
    cheap checks refuse is moved aside before any connection would fold those in.
    """
    settings = settings_at(state_dir, after_clean_stop="cheap")
    fill(settings, 5)
    Path(f"{settings.path}-wal").write_bytes(b"")
    Path(f"{settings.path}-shm").write_bytes(b"shm of a view")
    before = settings.path.stat()
    write_header(settings.path, 0, b"SQLite format 4")
    os.utime(settings.path, ns=(before.st_atime_ns, before.st_mtime_ns))
    queue = TapQueue(settings)
    try:
        target = queue.moved_aside
        assert queue.previous_stop == "clean" and target is not None
        assert queue.status().incidents[0].detail == f"{target}: header: no SQLite magic string"
        assert Path(f"{target}-wal").read_bytes() == b""
        assert Path(f"{target}-shm").read_bytes() == b"shm of a view"
        queue.enqueue(tap_record(1))
        assert queue.status().depth == 1
    finally:
        queue.close()


def test_a_file_that_is_no_database_is_refused_or_moved_aside_beside_earlier_ones(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    settings.path.write_bytes(b"\x01" * (2 * PAGE))
    with pytest.raises(QueueCorruptError) as refused:
        TapQueue(settings, on_corrupt="raise")
    assert refused.value.detail.startswith("quick_check: ")
    assert settings.path.read_bytes() == b"\x01" * (2 * PAGE)  # left where it was
    clock = lambda: 1_700_000_000.0  # noqa: E731 - the same second twice
    first = TapQueue(settings, clock=clock)
    first.close()
    marker_of(settings).unlink()
    settings.path.write_bytes(b"\x02" * (2 * PAGE))
    second = TapQueue(settings, clock=clock)
    try:
        assert first.moved_aside == settings.path.with_name("q.sqlite3.corrupt-20231114T221320")
        assert second.moved_aside == settings.path.with_name("q.sqlite3.corrupt-20231114T221320-2")
        assert second.moved_aside.read_bytes() == b"\x02" * (2 * PAGE)
        assert first.moved_aside.read_bytes() == b"\x01" * (2 * PAGE)
    finally:
        second.close()


# == the clean-shutdown marker =====================================================================


def test_a_clean_close_leaves_a_marker_naming_the_file_and_the_next_open_takes_it(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    queue = TapQueue(settings)
    queue.enqueue(tap_record(1))
    queue.close()
    queue.close()  # a second close changes nothing
    st = settings.path.stat()
    assert json.loads(marker_of(settings).read_text(encoding="ascii")) == {
        "format": 1,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    assert not Path(f"{marker_of(settings)}.tmp").exists()
    queue = TapQueue(settings)
    try:
        assert not marker_of(settings).exists(), "a crash from here on must read as unclean"
        assert queue.previous_stop == "clean"
    finally:
        queue.close()


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda s: marker_of(s).write_bytes(b"\xff\xfe"), id="not-ascii"),
        pytest.param(lambda s: marker_of(s).write_text("{"), id="not-json"),
        pytest.param(lambda s: os.utime(s.path, ns=(0, 0)), id="file-changed-since"),
        pytest.param(lambda s: Path(f"{s.path}-wal").write_bytes(b"\0" * 32), id="wal-frames-beside"),
    ],
)
def test_a_marker_that_does_not_match_the_file_reads_as_unclean_and_is_removed(
    state_dir: Path, spoil: Callable[[QueueSettings], object]
) -> None:
    settings = settings_at(state_dir)
    TapQueue(settings).close()
    spoil(settings)
    queue = TapQueue(settings)
    try:
        assert (queue.previous_stop, queue.open_check) == ("unclean", "quick_check")
        assert not marker_of(settings).exists()
    finally:
        queue.close()


def test_no_marker_while_another_queue_has_the_file_open_nor_from_a_read_only_view(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    writer = TapQueue(settings)
    other = TapQueue(settings)
    other.enqueue(tap_record(1))
    view = TapQueue(settings, readonly=True)
    assert view.status().depth == 1
    view.close()
    writer.close()
    assert not marker_of(settings).exists(), "the file is still open in another queue"
    other.close()
    assert marker_of(settings).exists()
    view = TapQueue(settings, readonly=True)
    view.close()
    assert marker_of(settings).exists(), "a read-only view neither takes nor leaves the marker"


# == the whole-file check in the background =========================================================


def test_the_background_check_passes_a_sound_file_and_the_stop_stays_clean(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    fill(settings, 50)
    queue = TapQueue(settings)
    assert queue.wait_for_background_check(30)
    assert queue.background_problem is None and queue.status().incidents == []
    queue.close()
    assert marker_of(settings).exists()


@pytest.mark.parametrize(("mode", "pragma"), [("quick", "quick_check"), ("full", "integrity_check")])
def test_damage_the_background_check_finds_is_recorded_and_leaves_no_marker(
    state_dir: Path, mode: str, pragma: str
) -> None:
    settings = settings_at(state_dir, integrity_check=mode)
    fill(settings, 600)
    leaves = leaf_pages(settings.path, "taps")
    smash(settings.path, leaves[len(leaves) // 2])
    queue = TapQueue(settings, clock=lambda: 1_700_000_000.0)
    assert queue.open_check == "cheap" and queue.moved_aside is None
    assert queue.wait_for_background_check(30)
    problem = queue.background_problem
    assert problem is not None and problem.startswith(f"{pragma}: ")
    (incident,) = queue.status().incidents
    assert (incident.at, incident.kind, incident.detail) == (1_700_000_000.0, "corruption_found_in_service", problem)
    queue.close()
    assert not marker_of(settings).exists(), "the next start must check the whole file"
    queue = TapQueue(settings)
    try:
        assert queue.previous_stop == "unclean" and queue.moved_aside is not None
    finally:
        queue.close()


def test_close_stops_the_background_check_and_keeps_the_clean_stop(state_dir: Path) -> None:
    settings = settings_at(state_dir, integrity_check="full")
    fill(settings, 3000)
    queue = TapQueue(settings)
    queue.close()
    assert queue.wait_for_background_check(0)
    assert queue.background_problem is None
    assert marker_of(settings).exists()


# == what the queue keeps and reports ===============================================================


def test_status_reports_the_queue_own_figures(state_dir: Path) -> None:
    now = [1_000.0]
    settings = QueueSettings(path=state_dir / "q.sqlite3", min_free_bytes=0, max_taps=77, max_bytes=99_999)
    queue = TapQueue(settings, clock=lambda: now[0])
    try:
        seqs = [queue.enqueue(tap_record(n)) for n in range(4)]
        now[0] = 1_010.0
        queue.record_failure(seqs[:1], "x" * 600)
        now[0] = 1_020.0
        assert queue.ack(seqs[:2]) == 2
        now[0] = 1_030.0
        assert queue.set_aside(seqs[2:3], "refused") == 1
        status = queue.status()
        assert (status.path, status.max_taps, status.max_bytes) == (str(settings.path), 77, 99_999)
        assert (status.depth, status.poison, status.delivered_total, status.last_delivery_at) == (1, 1, 2, 1_020.0)
        assert (status.errors_total, status.last_error, status.last_error_at) == (2, "set aside: refused", 1_030.0)
        assert status.oldest_age_s == 30.0 and status.out_of_service is None
        (poisoned,) = queue.iter_poison()
        assert (poisoned.tap.seq, poisoned.tap.attempts, poisoned.set_aside_at, poisoned.reason) == (
            seqs[2],
            0,
            1_030.0,
            "refused",
        )
        now[0] = 1_040.0
        queue.record_failure([], "e" * 600)
        assert queue.status().last_error == "e" * 500 and queue.status().last_error_at == 1_040.0
        assert queue.status().errors_total == 3
        (left,) = queue.iter_taps()
        assert left.seq == seqs[3] and left.attempts == 0
    finally:
        queue.close()


def test_status_lists_the_five_newest_incidents_newest_first(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    times = iter(float(t) for t in range(1, 100))
    queue = TapQueue(settings, clock=lambda: next(times))
    try:
        for n in range(7):
            with queue.transaction() as conn:
                conn.execute("INSERT INTO incidents (at, kind, detail) VALUES (?, 'test', ?)", (float(n), f"n{n}"))
        assert [i.detail for i in queue.status().incidents] == ["n6", "n5", "n4", "n3", "n2"]
    finally:
        queue.close()


def test_failures_count_attempts_only_on_the_rows_named(queue: TapQueue) -> None:
    a, b = queue.enqueue(tap_record(1)), queue.enqueue(tap_record(2))
    queue.record_failure([a], "timeout")
    queue.record_failure([a, b], "timeout")
    assert [(t.seq, t.attempts) for t in queue.iter_taps()] == [(a, 2), (b, 1)]
    queue.set_aside([a], "refused")
    (poisoned,) = queue.iter_poison()
    assert poisoned.tap.attempts == 2 and poisoned.tap.body == json.dumps(
        tap_record(1) | {"tapped_at": poisoned.tap.record()["tapped_at"]}, separators=(",", ":")
    )


def test_poison_retried_by_seq_goes_back_in_place_and_wakes_a_sender(queue: TapQueue) -> None:
    seqs = [queue.enqueue(tap_record(n)) for n in range(4)]
    queue.set_aside(seqs[:3], "refused")
    assert queue.wait_for_taps(0) is True  # the enqueues' wake-up
    assert queue.wait_for_taps(0) is False  # consumed: an idle sender waits
    assert queue.retry_poison([seqs[1]]) == 1
    assert queue.wait_for_taps(0) is True
    assert [t.seq for t in queue.iter_taps()] == [seqs[1], seqs[3]]
    assert [p.tap.seq for p in queue.iter_poison()] == [seqs[0], seqs[2]]
    assert queue.retry_poison() == 2
    assert [t.seq for t in queue.iter_taps()] == seqs and list(queue.iter_poison()) == []
    assert queue.wait_for_taps(0) is True
    assert queue.retry_poison() == 0 and queue.wait_for_taps(0) is False


def test_a_poison_row_whose_tap_id_was_queued_again_stays_aside(queue: TapQueue) -> None:
    seq = queue.enqueue(tap_record(1))
    queue.set_aside([seq], "refused")
    queue.enqueue(tap_record(1))
    assert queue.retry_poison() == 0
    assert [p.tap.seq for p in queue.iter_poison()] == [seq]


def test_an_idle_sender_wakes_when_its_wait_runs_out(queue: TapQueue) -> None:
    started = time.monotonic()
    assert queue.wait_for_taps(0.2) is False
    assert 0.15 <= time.monotonic() - started < 5


def test_a_closed_queue_refuses_every_use(queue_settings: QueueSettings) -> None:
    queue = TapQueue(queue_settings)
    queue.enqueue(tap_record(1))
    queue.close()
    with pytest.raises(UplinkError, match=r"^queue .* is closed$"):
        queue.enqueue(tap_record(2))
    with pytest.raises(UplinkError, match=r"^queue .* is closed$"):
        queue.status()
    assert queue.out_of_service is None  # closing is no storage failure
    reopened = TapQueue(queue_settings)
    try:
        assert reopened.status().depth == 1
    finally:
        reopened.close()


def test_a_read_only_view_of_a_missing_file_names_it(state_dir: Path) -> None:
    path = state_dir / "nowhere.sqlite3"
    with pytest.raises(QueueMissingError, match=str(path)):
        TapQueue(QueueSettings(path=path), readonly=True)
    assert not path.exists()


def test_connections_wait_on_the_lock_for_the_busy_timeout(state_dir: Path) -> None:
    queue = TapQueue(QueueSettings(path=state_dir / "q.sqlite3", min_free_bytes=0, busy_timeout_s=0.25))
    view = TapQueue(QueueSettings(path=state_dir / "q.sqlite3", busy_timeout_s=0.25), readonly=True)
    try:
        assert queue._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 250
        assert view._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 250
        assert queue._conn().isolation_level is None  # transactions are the queue's own BEGIN IMMEDIATE
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            view._conn().execute("DELETE FROM taps")
        blocker = sqlite3.connect(queue.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(QueueStorageError):
            queue.enqueue(tap_record(1))
        assert 0.2 <= time.monotonic() - started < 5
        blocker.execute("ROLLBACK")
        blocker.close()
        queue.enqueue(tap_record(1))  # back in service once the lock is free
        assert queue.out_of_service is None
    finally:
        view.close()
        queue.close()


def test_a_file_that_reaches_its_page_limit_is_a_full_disk(queue: TapQueue) -> None:
    """SQLITE_FULL (here from max_page_count, as from ENOSPC) refuses the tap as a full disk."""
    conn = queue._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(DiskFullError):
        queue.enqueue(tap_record(1, route="x" * 20_000))
    assert isinstance(queue.out_of_service, DiskFullError)
    assert queue.status().depth == 0


def test_records_are_stored_as_compact_utf8_json_and_bad_ones_refused(queue: TapQueue) -> None:
    record = tap_record(1, stop="人民广场")
    queue.enqueue(record)
    (tap,) = queue.iter_taps()
    assert tap.body == json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    assert tap.size == len(tap.body.encode("utf-8")) and "人民广场" in tap.body
    for bad in (
        tap_record(2, terminal_id=""),
        {**tap_record(3), "tap_id": ""},
        {**tap_record(4), "tap_id": 4},
        tap_record(5, fare_fen=float("nan")),
        tap_record(6, fare_fen=object()),
    ):
        with pytest.raises(TapRecordError):
            queue.enqueue(bad)
    assert queue.status().depth == 1


def test_an_acknowledgement_deletes_exactly_the_rows_named_and_counts_them(state_dir: Path) -> None:
    now = [500.0]
    queue = TapQueue(settings_at(state_dir), clock=lambda: now[0])
    try:
        seqs = [queue.enqueue(tap_record(n)) for n in range(5)]
        assert queue.ack([]) == 0
        assert queue.status().last_delivery_at is None
        now[0] = 510.0
        assert queue.ack([seqs[3], seqs[1], 10_000]) == 2  # a row no longer queued is not counted
        assert [t.seq for t in queue.iter_taps()] == [seqs[0], seqs[2], seqs[4]]
        status = queue.status()
        assert (status.depth, status.delivered_total, status.last_delivery_at) == (3, 2, 510.0)
        assert queue.ack({seqs[0], seqs[1]}) == 1
        assert queue.status().delivered_total == 3
    finally:
        queue.close()


def test_a_batch_after_a_cursor_starts_above_it_and_keeps_to_its_count(queue: TapQueue) -> None:
    seqs = [queue.enqueue(tap_record(n)) for n in range(6)]
    assert [t.seq for t in queue.batch_after(seqs[1], 3)] == seqs[2:5]
    assert [t.seq for t in queue.batch_after(seqs[4], 3)] == seqs[5:]
    assert queue.batch_after(seqs[5], 3) == []
    assert queue.batch_after(0, 0) == [] and queue.batch_after(0, -1) == []
    (first,) = queue.batch_after(0, 1)
    assert first.record()["tap_id"] == tap_record(0)["tap_id"]


def test_pages_freed_by_deliveries_are_handed_back(state_dir: Path) -> None:
    queue = TapQueue(settings_at(state_dir, reclaim_after_pages=8))
    try:
        seqs = [queue.enqueue(tap_record(n, route="r" * 3000)) for n in range(40)]
        conn = queue._conn()
        filled = conn.execute("PRAGMA page_count").fetchone()[0]
        queue.ack(seqs[:2])  # a page or two free: below the threshold, kept for reuse
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] > 0
        queue.ack(seqs[2:])
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
        assert conn.execute("PRAGMA page_count").fetchone()[0] < filled - 20
    finally:
        queue.close()


# == durability levels, bounds' words, and the edges of the open ===================================


def synchronous(queue: TapQueue) -> int:
    """This thread's connection's synchronous level (1 NORMAL, 2 FULL)."""
    level: int = queue._conn().execute("PRAGMA synchronous").fetchone()[0]
    return level


def test_a_tap_commits_at_full_and_the_bookkeeping_at_normal(queue: TapQueue) -> None:
    """The module's promise: enqueue syncs the WAL (a told-accepted tap survives a power cut); the
    deletes and counters after it commit at NORMAL, off the senders' path; and the next enqueue
    is back at FULL whatever ran before it."""
    assert synchronous(queue) == 2
    seqs = [queue.enqueue(tap_record(n)) for n in range(6)]
    assert synchronous(queue) == 2
    steps: list[Callable[[], object]] = [
        lambda: queue.ack(seqs[:1]),
        lambda: queue.record_failure(seqs[2:3], "timeout"),
        lambda: queue.set_aside(seqs[3:4], "refused"),
        queue.retry_poison,
    ]
    for n, step in enumerate(steps):
        step()
        assert synchronous(queue) == 1, n
        queue.enqueue(tap_record(100 + n))
        assert synchronous(queue) == 2, n


def test_the_refusal_of_a_full_queue_says_how_full_it_is(state_dir: Path) -> None:
    with sized(state_dir, max_taps=2) as queue:
        queue.enqueue(tap_record(1))
        queue.enqueue(tap_record(2))
        with pytest.raises(QueueFullError) as full:
            queue.enqueue(tap_record(3))
        assert full.value.detail == "2 taps queued, bound is 2"
    size = record_size(state_dir)
    with sized(state_dir / "bytes", max_bytes=size) as queue:
        queue.enqueue(tap_record(1))
        with pytest.raises(QueueFullError) as full:
            queue.enqueue(tap_record(2))
        assert full.value.detail == f"queued records would reach {2 * size} bytes, bound is {size}"


def test_a_reused_tap_id_is_refused_naming_the_tap_and_the_terminal(queue: TapQueue) -> None:
    queue.enqueue(tap_record(1))
    with pytest.raises(DuplicateTapError) as duplicate:
        queue.enqueue(tap_record(1))
    assert str(duplicate.value) == f"tap {tap_record(1)['tap_id']} of terminal VAL-000123 is already queued"
    assert queue.out_of_service is None  # a terminal's bug, not a storage failure


def test_a_batch_keeps_to_its_count_when_rows_in_flight_are_no_longer_queued(queue: TapQueue) -> None:
    seqs = [queue.enqueue(tap_record(n)) for n in range(5)]
    queue.ack(seqs[:1])
    assert [t.seq for t in queue.batch(2, skip={seqs[0]})] == seqs[1:3]


def test_the_queue_directory_is_created_owner_only_with_its_parents(state_dir: Path) -> None:
    path = state_dir / "var" / "lib" / "sscard" / "q.sqlite3"
    queue = TapQueue(QueueSettings(path=path, min_free_bytes=0))
    try:
        queue.enqueue(tap_record(1))
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        queue.close()
    assert stat.S_IMODE(marker_of(QueueSettings(path=path)).stat().st_mode) == 0o600


def test_a_file_of_another_schema_version_is_refused_naming_it(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    TapQueue(settings).close()
    db = sqlite3.connect(settings.path)
    db.execute("PRAGMA user_version=2")
    db.close()
    with pytest.raises(QueueCorruptError) as refused:
        TapQueue(settings)
    assert (refused.value.path, refused.value.detail) == (settings.path, "schema version 2, this code knows 1")


def test_a_corrupt_file_refused_at_open_names_its_path(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    settings.path.write_bytes(b"\x01" * (2 * PAGE))
    with pytest.raises(QueueCorruptError) as refused:
        TapQueue(settings, on_corrupt="raise")
    assert refused.value.path == settings.path


@pytest.mark.parametrize(
    ("offset", "field", "problem"),
    [
        # 32768 is a page size the format allows; read signed it would be refused as negative.
        pytest.param(16, struct.pack(">H", 32768), "file size {size} is not a whole number of 32768-byte pages"),
        # A count beyond 2**31 pages is more than the file holds, not a negative number.
        pytest.param(28, struct.pack(">I", 0x80000001), "the header counts 2147483649 pages, the file holds {pages}"),
        pytest.param(56, struct.pack(">I", 0x80000002), "text encoding 2147483650, this code writes UTF-8 (1)"),
    ],
)
def test_header_fields_are_read_unsigned(sound_file: Path, offset: int, field: bytes, problem: str) -> None:
    size = sound_file.stat().st_size
    write_header(sound_file, offset, field)
    expected = problem.format(size=size, pages=size // PAGE)
    if offset == 28:
        expected += ": truncated"
    assert _header_problem(sound_file) == expected


def unindexed(settings: QueueSettings, taps: int) -> None:
    """A file whose index `extra` no longer matches its table: integrity_check lists each row.

    (quick_check does not compare index contents; integrity_check does, one line per row.)
    """
    fill(settings, taps)
    db = sqlite3.connect(settings.path, isolation_level=None)
    db.execute("CREATE INDEX extra ON taps (tap_id)")
    db.execute("PRAGMA writable_schema=ON")
    db.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX extra ON taps (body DESC)' WHERE name = 'extra'")
    db.close()


FIVE_ROWS = "; ".join(f"row {n} missing from index extra" for n in range(1, 6))


def test_the_whole_file_check_records_the_first_five_findings(state_dir: Path) -> None:
    settings = settings_at(state_dir, integrity_check="full")
    unindexed(settings, 20)
    queue = TapQueue(settings)  # no marker (the file was written since): the check runs before READY
    try:
        assert queue.previous_stop == "unclean" and queue.moved_aside is not None
        assert queue.status().incidents[0].detail == f"{queue.moved_aside}: integrity_check: {FIVE_ROWS}"
    finally:
        queue.close()


def test_the_background_check_records_the_first_five_findings(state_dir: Path) -> None:
    settings = settings_at(state_dir, integrity_check="full")
    unindexed(settings, 20)
    restamp_marker(settings)
    queue = TapQueue(settings)
    try:
        assert queue.open_check == "cheap" and queue.moved_aside is None
        assert queue.wait_for_background_check(30)
        assert queue.background_problem == f"integrity_check: {FIVE_ROWS}"
        assert queue._background is not None and queue._background.daemon  # never holds up an exit
    finally:
        queue.close()


def test_a_stop_after_the_background_check_finished_is_quick(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    fill(settings, 20)
    queue = TapQueue(settings)
    assert queue.wait_for_background_check(30)
    started = time.monotonic()
    queue.close()
    assert time.monotonic() - started < 2.0


def test_a_read_only_view_never_leaves_a_marker_for_a_file_it_did_not_see_closed(state_dir: Path) -> None:
    """A file without a marker (a crash, a restore) must be checked whole at the next start,
    however many views `sscard queue status` opened on it meanwhile."""
    settings = settings_at(state_dir)
    TapQueue(settings).close()
    marker_of(settings).unlink()
    view = TapQueue(settings, readonly=True)
    assert view.status().depth == 0
    view.close()
    assert not marker_of(settings).exists()
    queue = TapQueue(settings)
    try:
        assert queue.previous_stop == "unclean"
    finally:
        queue.close()


def test_a_read_only_view_read_in_a_worker_closes_from_the_main_thread(state_dir: Path) -> None:
    settings = settings_at(state_dir)
    TapQueue(settings).close()
    view = TapQueue(settings, readonly=True)
    depth: list[int] = []
    worker = threading.Thread(target=lambda: depth.append(view.status().depth))
    worker.start()
    worker.join(10)
    assert depth == [0]
    view.close()  # closes the worker's connection too


def test_a_damaged_file_met_in_service_is_a_storage_error(queue: TapQueue) -> None:
    queue.enqueue(tap_record(1))
    vandal = sqlite3.connect(queue.path)
    vandal.execute("DROP TABLE totals")
    vandal.commit()
    vandal.close()
    with pytest.raises(QueueStorageError, match="no such table"):
        queue.check_accepting()
    assert isinstance(queue.out_of_service, QueueStorageError)
    with pytest.raises(QueueStorageError, match="cannot read the queue's status: no such table"):
        queue.status()


def test_pages_are_reclaimed_once_exactly_the_threshold_is_free(state_dir: Path) -> None:
    def freed_after_two(directory: Path, threshold: int) -> int:
        queue = TapQueue(settings_at(directory, reclaim_after_pages=threshold))
        try:
            seqs = [queue.enqueue(tap_record(n, route="r" * 3000)) for n in range(40)]
            queue.ack(seqs[:2])
            free: int = queue._conn().execute("PRAGMA freelist_count").fetchone()[0]
            return free
        finally:
            queue.close()

    (state_dir / "a").mkdir()
    (state_dir / "b").mkdir()
    free = freed_after_two(state_dir / "a", 1000)
    assert free > 0
    assert freed_after_two(state_dir / "b", free) == 0
