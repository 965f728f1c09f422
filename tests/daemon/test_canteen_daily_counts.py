"""The daily counts on their own, in a real queue file: what the file holds after each step."""

from __future__ import annotations

import datetime as dt
import sqlite3
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.daemon.daily_counts import KEEP_DAYS, DailyCounts
from reader.uplink.errors import QueueStorageError
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings

ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 5, 20, 12, 0, tzinfo=ZONE)
A, B = "aa" * 32, "bb" * 32


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[TapQueue]:
    with TapQueue(QueueSettings(path=tmp_path / "queue.sqlite3")) as opened:
        yield opened


def test_counts_by_scope_card_and_local_day(queue: TapQueue) -> None:
    counts = DailyCounts(queue)
    assert counts.add("t1", "meal:lunch", A, NOON)
    assert counts.add("t2", "meal:lunch", B, NOON)
    assert counts.add("t2", "meal", B, NOON), "one tap may count in two scopes"
    assert counts.count("meal:lunch", NOON.date(), A) == 1
    assert counts.count("meal:lunch", NOON.date()) == 2
    assert counts.count("meal:dinner", NOON.date(), A) == 0
    assert counts.count("meal:lunch", NOON.date() + dt.timedelta(days=1), A) == 0


def test_the_day_is_the_terminal_s_local_day_not_utc(queue: TapQueue) -> None:
    counts = DailyCounts(queue)
    early = dt.datetime(2026, 5, 20, 7, 0, tzinfo=ZONE)  # 2026-05-19 23:00 UTC
    counts.add("t1", "venue", A, early)
    assert counts.count("venue", dt.date(2026, 5, 20), A) == 1
    assert counts.count("venue", dt.date(2026, 5, 19), A) == 0


def test_a_tap_counted_twice_counts_once(queue: TapQueue) -> None:
    counts = DailyCounts(queue)
    assert counts.add("t1", "venue", A, NOON)
    assert not counts.add("t1", "venue", A, NOON)
    assert counts.count("venue", NOON.date()) == 1


def test_counts_survive_a_reopened_queue(tmp_path: Path) -> None:
    settings = QueueSettings(path=tmp_path / "queue.sqlite3")
    with TapQueue(settings) as first:
        DailyCounts(first).add("t1", "venue", A, NOON)
    with TapQueue(settings) as again:
        counts = DailyCounts(again)
        assert counts.count("venue", NOON.date(), A) == 1
        assert counts.last("venue", A) == NOON.astimezone(dt.UTC)


def test_last_is_the_newest_of_the_card(queue: TapQueue) -> None:
    counts = DailyCounts(queue)
    counts.add("t1", "meal", A, NOON)
    counts.add("t2", "meal", A, NOON + dt.timedelta(minutes=5))
    counts.add("t3", "meal", B, NOON + dt.timedelta(minutes=9))
    assert counts.last("meal", A) == (NOON + dt.timedelta(minutes=5)).astimezone(dt.UTC)
    assert counts.last("venue", A) is None


def test_old_days_are_pruned_as_new_taps_come(queue: TapQueue) -> None:
    counts = DailyCounts(queue)
    counts.add("old", "venue", A, NOON - dt.timedelta(days=KEEP_DAYS))
    counts.add("yesterday", "venue", A, NOON - dt.timedelta(days=KEEP_DAYS - 1))
    counts.add("today", "venue", B, NOON)
    rows = sqlite3.connect(queue.path).execute("SELECT tap_id FROM daily_counts ORDER BY at").fetchall()
    assert rows == [("yesterday",), ("today",)]


def test_a_damaged_table_is_a_storage_error(queue: TapQueue) -> None:
    counts = DailyCounts(queue)
    with queue.transaction() as conn:
        conn.execute("DROP TABLE daily_counts")
    with pytest.raises(QueueStorageError):
        counts.count("venue", NOON.date())
