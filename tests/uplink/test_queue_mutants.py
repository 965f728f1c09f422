"""The queue's bounds and pages at their edges: where a one-character change loses or refuses taps.

A bound that refuses one tap too early puts a validator out of service with room left; one
that refuses too late lets the file grow past what was sized for it. Batches must never
exceed their count or byte limit, paging must not skip or repeat a row, and the figures an
operator reads (depth, oldest age) must be the queue's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reader.uplink.errors import QueueFullError
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from tests.support.taps import tap_record


def sized(path: Path, **bounds: int) -> TapQueue:
    return TapQueue(QueueSettings(path=path / "queue.sqlite3", min_free_bytes=0, **bounds))


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
