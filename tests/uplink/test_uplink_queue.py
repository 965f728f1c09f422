"""The SQLite tap queue on its own: durability settings, order, bounds, poison, corruption, threads."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from reader.uplink.errors import (
    DuplicateTapError,
    QueueCorruptError,
    QueueFullError,
    QueueMissingError,
    TapRecordError,
)
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from tests.support.taps import tap_record


def test_file_uses_wal_incremental_vacuum_and_full_sync_for_taps(queue: TapQueue) -> None:
    queue.enqueue(tap_record(1))
    conn = queue._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # Deletes after an acknowledgement commit at NORMAL; the next tap is FULL again.
    queue.ack([queue.batch(1)[0].seq])
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    queue.enqueue(tap_record(2))
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    # A connection in another thread (a sender) is set up the same way.
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(queue._conn().execute("PRAGMA synchronous").fetchone()[0]))
    worker.start()
    worker.join()
    assert seen == [2]


def test_queue_files_are_private(queue: TapQueue, queue_settings: QueueSettings) -> None:
    queue.enqueue(tap_record(1))
    for suffix in ("", "-wal", "-shm"):
        mode = Path(f"{queue_settings.path}{suffix}").stat().st_mode & 0o777
        assert mode == 0o600, (suffix, oct(mode))


def test_enqueue_is_visible_to_another_connection_once_it_returns(
    queue: TapQueue, queue_settings: QueueSettings
) -> None:
    record = tap_record(7)
    queue.enqueue(record)
    other = sqlite3.connect(queue_settings.path)
    body = other.execute("SELECT body FROM taps").fetchone()[0]
    other.close()
    assert json.loads(body) == record


def test_batches_come_in_order_and_ack_deletes(queue: TapQueue) -> None:
    for n in range(10):
        queue.enqueue(tap_record(n))
    first = queue.batch(4)
    assert [t.tap_id for t in first] == [tap_record(n)["tap_id"] for n in range(4)]
    assert first[0].record() == tap_record(0) | {"tapped_at": first[0].record()["tapped_at"]}
    assert queue.ack(t.seq for t in first) == 4
    assert queue.ack(t.seq for t in first) == 0  # a second acknowledgement deletes nothing
    rest = queue.batch(100)
    assert [t.record()["seq"] for t in rest] == list(range(4, 10))
    status = queue.status()
    assert status.depth == 6
    assert status.delivered_total == 4
    assert status.last_delivery_at is not None
    assert status.oldest_age_s is not None and status.oldest_age_s >= 0


def test_batch_respects_byte_limit_and_skip(queue: TapQueue) -> None:
    for n in range(10):
        queue.enqueue(tap_record(n))
    size = queue.batch(1)[0].size
    assert len(queue.batch(10, max_bytes=size * 3 + 1)) == 3
    assert len(queue.batch(10, max_bytes=1)) == 1  # an oversized record still moves
    first_two = {t.seq for t in queue.batch(2)}
    skipped = queue.batch(3, skip=first_two)
    assert [t.record()["seq"] for t in skipped] == [2, 3, 4]


def test_duplicate_tap_id_is_refused(queue: TapQueue) -> None:
    queue.enqueue(tap_record(1))
    with pytest.raises(DuplicateTapError):
        queue.enqueue(tap_record(1))
    # The same id from another terminal is another tap.
    queue.enqueue(tap_record(1, terminal_id="VAL-000999"))
    assert queue.status().depth == 2


@pytest.mark.parametrize(
    "record",
    [
        {"terminal_id": "VAL-1"},
        {"tap_id": "x"},
        {"tap_id": "", "terminal_id": "VAL-1"},
        {"tap_id": "x", "terminal_id": "V", "t": {1, 2}},
    ],
)
def test_bad_records_are_refused(queue: TapQueue, record: dict[str, object]) -> None:
    with pytest.raises(TapRecordError):
        queue.enqueue(record)
    assert queue.status().depth == 0


def test_count_bound_puts_terminal_out_of_service_until_deliveries(state_dir: Path) -> None:
    queue = TapQueue(QueueSettings(path=state_dir / "q.sqlite3", max_taps=5, min_free_bytes=0))
    for n in range(5):
        queue.enqueue(tap_record(n))
    with pytest.raises(QueueFullError) as refused:
        queue.enqueue(tap_record(5))
    assert refused.value.display_message
    assert queue.out_of_service is not None and queue.out_of_service.reason == "queue_full"
    assert queue.status().out_of_service == "queue_full"
    with pytest.raises(QueueFullError):
        queue.check_accepting()
    assert queue.status().depth == 5
    queue.ack([queue.batch(1)[0].seq])
    queue.check_accepting()
    assert queue.out_of_service is None
    queue.enqueue(tap_record(5))
    assert [t.record()["seq"] for t in queue.iter_taps()] == [1, 2, 3, 4, 5]
    queue.close()


def test_byte_bound(state_dir: Path) -> None:
    queue = TapQueue(QueueSettings(path=state_dir / "q.sqlite3", max_bytes=1000, min_free_bytes=0))
    accepted = 0
    with pytest.raises(QueueFullError):
        for n in range(100):
            queue.enqueue(tap_record(n))
            accepted += 1
    status = queue.status()
    assert status.depth == accepted
    assert 0 < status.bytes <= 1000
    queue.close()


def test_poison_is_kept_aside_and_can_be_retried_in_place(queue: TapQueue) -> None:
    for n in range(5):
        queue.enqueue(tap_record(n))
    taps = queue.batch(5)
    assert queue.set_aside([taps[1].seq, taps[3].seq], "http 422: refused") == 2
    assert [t.record()["seq"] for t in queue.iter_taps()] == [0, 2, 4]
    poisoned = list(queue.iter_poison())
    assert [p.tap.record()["seq"] for p in poisoned] == [1, 3]
    assert poisoned[0].reason == "http 422: refused"
    status = queue.status()
    assert status.poison == 2
    assert status.depth == 3
    assert status.last_error == "set aside: http 422: refused"
    assert queue.retry_poison([taps[3].seq]) == 1
    assert queue.retry_poison() == 1
    assert [t.record()["seq"] for t in queue.iter_taps()] == [0, 1, 2, 3, 4]
    assert queue.status().poison == 0


def test_record_failure_counts_attempts_and_errors(queue: TapQueue) -> None:
    queue.enqueue(tap_record(1))
    tap = queue.batch(1)[0]
    queue.record_failure([tap.seq], "503 Service Unavailable")
    queue.record_failure([tap.seq], "ReadTimeout")
    assert queue.batch(1)[0].attempts == 2
    status = queue.status()
    assert status.errors_total == 2
    assert status.last_error == "ReadTimeout"


def test_space_is_reclaimed_after_delivery(state_dir: Path) -> None:
    path = state_dir / "q.sqlite3"
    queue = TapQueue(QueueSettings(path=path, min_free_bytes=0, reclaim_after_pages=16))
    for n in range(3000):
        queue.enqueue(tap_record(n, pad="x" * 500))
    conn = queue._conn()
    pages_full = conn.execute("PRAGMA page_count").fetchone()[0]
    while taps := queue.batch(500):
        queue.ack(t.seq for t in taps)
    pages_after = conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages_after < pages_full / 10
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] < 16
    queue.close()


def _corrupt(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    # Overwrite page 2 onwards (table b-trees) with a pattern, keep the header page intact.
    for i in range(4096, min(len(data), 4096 * 4)):
        data[i] = 0xA5
    path.write_bytes(bytes(data))
    return bytes(data)


def test_corrupt_file_is_moved_aside_and_reported(state_dir: Path) -> None:
    settings = QueueSettings(path=state_dir / "q.sqlite3", min_free_bytes=0, integrity_check="full")
    queue = TapQueue(settings)
    for n in range(200):
        queue.enqueue(tap_record(n))
    queue.close()
    corrupted = _corrupt(settings.path)

    with pytest.raises(QueueCorruptError):
        TapQueue(settings, on_corrupt="raise")
    assert settings.path.read_bytes() == corrupted  # "raise" leaves the file alone

    queue = TapQueue(settings)
    assert queue.moved_aside is not None
    assert queue.moved_aside.read_bytes() == corrupted  # kept byte for byte, not deleted
    status = queue.status()
    assert status.depth == 0
    assert [i.kind for i in status.incidents] == ["corrupt_file_moved_aside"]
    assert str(queue.moved_aside) in status.incidents[0].detail
    queue.enqueue(tap_record(1))  # the fresh queue works
    queue.close()


def test_garbage_file_is_moved_aside(state_dir: Path) -> None:
    path = state_dir / "q.sqlite3"
    path.write_bytes(b"this is not a database" * 300)
    queue = TapQueue(QueueSettings(path=path, min_free_bytes=0))
    assert queue.moved_aside is not None and queue.moved_aside.exists()
    assert queue.status().incidents[0].kind == "corrupt_file_moved_aside"
    queue.close()


def test_readonly_view_while_the_writer_runs(queue: TapQueue, queue_settings: QueueSettings) -> None:
    queue.enqueue(tap_record(1))
    view = TapQueue(queue_settings, readonly=True)
    assert view.status().depth == 1
    queue.enqueue(tap_record(2))
    assert [t.record()["seq"] for t in view.iter_taps()] == [1, 2]
    with pytest.raises(sqlite3.OperationalError):
        view.ack([1])
    view.close()
    with pytest.raises(QueueMissingError):
        TapQueue(QueueSettings(path=queue_settings.path.with_name("absent.sqlite3")), readonly=True)


def test_writer_and_sender_threads_share_the_queue(queue: TapQueue) -> None:
    total = 2000
    delivered: list[str] = []
    done = threading.Event()

    def sender() -> None:
        while True:
            taps = queue.batch(50)
            if not taps:
                if done.is_set():
                    return
                queue.wait_for_taps(0.05)
                continue
            delivered.extend(t.tap_id for t in taps)
            queue.ack(t.seq for t in taps)

    thread = threading.Thread(target=sender)
    thread.start()
    for n in range(total):
        queue.enqueue(tap_record(n))
    done.set()
    thread.join(30)
    assert delivered == [tap_record(n)["tap_id"] for n in range(total)]  # each once, in order
    status = queue.status()
    assert status.depth == 0 and status.bytes == 0
    assert status.delivered_total == total
