"""The journal on its own: pending debits by keyed purse digest, one-commit settlement, marks.

No card and no pcscd: the journal is SQLite in the queue's file, and every rule here is about
what that file holds after each step.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocols.purchase import Recovery
from reader.daemon.journal import CardMark, Journal, PendingDebit, Settlement, mask_serial
from reader.uplink.errors import DuplicateTapError, QueueStorageError
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from tests.support.taps import tap_record

KEY = b"k" * 32
SERIAL = "03104510100000009991"
WHEN = dt.datetime(2026, 5, 20, 1, 0, tzinfo=dt.UTC)
RECOVERY = Recovery(SERIAL, 41, 0x09, 200, 5000, bytes.fromhex("510100000001"), 7, dt.datetime(2026, 5, 20, 9))


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[TapQueue]:
    with TapQueue(QueueSettings(path=tmp_path / "queue.sqlite3")) as opened:
        yield opened


def pending(tap_id: str = "tap-1", serial: str = SERIAL, allowance: int = 500) -> PendingDebit:
    recovery = dataclasses.replace(RECOVERY, application_serial=serial)
    return PendingDebit(tap_id, recovery, WHEN, "ab" * 32, "510100", allowance)


def test_a_pending_debit_comes_back_whole_for_its_purse(queue: TapQueue) -> None:
    journal = Journal(queue, KEY)
    journal.begin_debit(pending())
    found = journal.pending(SERIAL)
    assert found == dataclasses.replace(pending(), serial_masked="****************9991")
    assert found is not None and found.recovery == RECOVERY
    assert journal.pending("03104510100000009992") is None


def test_the_purse_is_named_by_a_keyed_digest_never_by_its_serial(queue: TapQueue) -> None:
    Journal(queue, KEY).begin_debit(pending())
    rows = sqlite3.connect(queue.path).execute("SELECT * FROM pending_debits").fetchall()
    assert len(rows) == 1
    assert SERIAL not in json.dumps(rows), "the serial in clear"
    assert Journal(queue, b"another key" * 3).pending(SERIAL) is None, "the digest is keyed"


def test_the_purse_digest_is_stable_across_versions(queue: TapQueue) -> None:
    """A journal written now must be found by the next version: HMAC-SHA256(key, "purse:" serial)."""
    expected = hmac.new(KEY, b"purse:" + SERIAL.encode(), hashlib.sha256).hexdigest()
    assert Journal(queue, KEY).purse(SERIAL) == expected


def test_all_pending_lists_oldest_first_with_masked_serials(queue: TapQueue) -> None:
    journal = Journal(queue, KEY)
    later = dataclasses.replace(pending("tap-2", "03104510100000001234"), created_at=WHEN + dt.timedelta(minutes=1))
    journal.begin_debit(later)
    journal.begin_debit(pending())
    listed = journal.all_pending()
    assert [p.tap_id for p in listed] == ["tap-1", "tap-2"]
    assert [p.serial_masked for p in listed] == ["****************9991", "****************1234"]
    assert all(p.recovery.application_serial == "" for p in listed)


def test_settling_with_the_record_is_one_commit(queue: TapQueue) -> None:
    journal = Journal(queue, KEY)
    journal.begin_debit(pending())
    settle = journal.settle(Settlement(SERIAL, ("ab" * 32, CardMark.PAID, WHEN), dt.timedelta(seconds=60)))
    queue.enqueue(tap_record(1), also=settle)
    assert journal.pending(SERIAL) is None
    assert journal.last("ab" * 32, CardMark.PAID) == WHEN
    assert journal.last("ab" * 32, CardMark.NOT_GENUINE) is None


def test_a_record_that_cannot_be_committed_settles_nothing(queue: TapQueue) -> None:
    journal = Journal(queue, KEY)
    journal.begin_debit(pending())
    queue.enqueue(tap_record(1))
    with pytest.raises(DuplicateTapError):
        queue.enqueue(tap_record(1), also=journal.settle(Settlement(SERIAL)))
    assert journal.pending(SERIAL) is not None, "the settlement rolled back with the record"


def test_marks_older_than_the_window_are_pruned(queue: TapQueue) -> None:
    journal = Journal(queue, KEY)
    window = dt.timedelta(seconds=60)
    old = ("cd" * 32, CardMark.PAID, WHEN)
    queue.enqueue(tap_record(1), also=journal.settle(Settlement(mark=old, keep=window)))
    edge = ("ef" * 32, CardMark.NOT_GENUINE, WHEN + window)
    queue.enqueue(tap_record(2), also=journal.settle(Settlement(mark=edge, keep=window)))
    assert journal.last("cd" * 32, CardMark.PAID) == WHEN, "exactly `keep` old: kept"
    later = ("ab" * 32, CardMark.PAID, WHEN + window + dt.timedelta(seconds=1))
    queue.enqueue(tap_record(3), also=journal.settle(Settlement(mark=later, keep=window)))
    assert journal.last("cd" * 32, CardMark.PAID) is None
    assert journal.last("ef" * 32, CardMark.NOT_GENUINE) == WHEN + window


def test_settle_tap_and_clear_forget_one_debit_each(queue: TapQueue) -> None:
    journal = Journal(queue, KEY)
    journal.begin_debit(pending("tap-1"))
    journal.begin_debit(pending("tap-2", "03104510100000001234"))
    queue.enqueue(tap_record(1), also=journal.settle_tap("tap-1"))
    assert [p.tap_id for p in journal.all_pending()] == ["tap-2"]
    journal.clear("03104510100000001234")
    assert journal.all_pending() == []
    journal.begin_debit(pending("tap-3"))
    journal.clear(tap_id="tap-3")
    assert journal.all_pending() == []


def test_a_journal_file_of_an_earlier_version_is_adopted_and_removed(queue: TapQueue, tmp_path: Path) -> None:
    old = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(old)
    db.execute(
        "CREATE TABLE pending_debits (serial TEXT PRIMARY KEY, tap_id TEXT NOT NULL, recovery TEXT NOT NULL,"
        " created_at REAL NOT NULL, token TEXT, region TEXT, allowance INTEGER NOT NULL DEFAULT 0)"
    )
    fields = dataclasses.asdict(RECOVERY)
    fields |= {"terminal_id": RECOVERY.terminal_id.hex(), "time": RECOVERY.time.isoformat()}
    db.execute(
        "INSERT INTO pending_debits VALUES (?, ?, ?, ?, ?, ?, ?)",
        (SERIAL, "tap-old", json.dumps(fields), WHEN.timestamp(), "ab" * 32, "510100", 300),
    )
    db.commit()
    db.close()
    journal = Journal(queue, KEY)
    assert journal.adopt(old) == 1
    assert not old.exists()
    adopted = journal.pending(SERIAL)
    assert adopted is not None
    assert (adopted.tap_id, adopted.recovery, adopted.created_at, adopted.allowance) == ("tap-old", RECOVERY, WHEN, 300)
    assert (adopted.token, adopted.region) == ("ab" * 32, "510100")
    assert journal.adopt(old) == 0, "nothing left to adopt"


def test_mask_serial_keeps_the_last_four_digits() -> None:
    assert mask_serial(SERIAL) == "*" * 16 + "9991"
    assert mask_serial("123") == "123"


def test_a_damaged_file_is_a_storage_error_not_a_crash(queue: TapQueue) -> None:
    journal = Journal(queue, KEY)
    vandal = sqlite3.connect(queue.path)
    vandal.execute("DROP TABLE pending_debits")
    vandal.commit()
    vandal.close()
    with pytest.raises(QueueStorageError):
        journal.pending(SERIAL)
    with pytest.raises(QueueStorageError):
        journal.all_pending()


def _old_journal(path: Path, recovery_fields: dict[str, object]) -> None:
    """A journal file as earlier versions wrote it: its own file, the serial in clear."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE pending_debits (serial TEXT PRIMARY KEY, tap_id TEXT NOT NULL, recovery TEXT NOT NULL,"
        " created_at REAL NOT NULL, token TEXT, region TEXT, allowance INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "INSERT INTO pending_debits VALUES (?, ?, ?, ?, ?, ?, ?)",
        (SERIAL, "tap-old", json.dumps(recovery_fields), WHEN.timestamp(), None, None, 0),
    )
    db.commit()
    db.close()


def test_an_old_row_whose_recovery_does_not_repeat_the_serial_is_adopted(queue: TapQueue, tmp_path: Path) -> None:
    """The serial has a column of its own; a recovery text without it must not stop the upgrade."""
    fields = dataclasses.asdict(RECOVERY)
    del fields["application_serial"]
    fields |= {"terminal_id": RECOVERY.terminal_id.hex(), "time": RECOVERY.time.isoformat()}
    old = tmp_path / "journal.sqlite3"
    _old_journal(old, fields)
    journal = Journal(queue, KEY)
    assert journal.adopt(old) == 1
    adopted = journal.pending(SERIAL)
    assert adopted is not None and adopted.recovery == RECOVERY


def test_an_old_file_that_cannot_be_read_is_kept_and_adopts_nothing(queue: TapQueue, tmp_path: Path) -> None:
    """A file that may still hold a torn debit is never deleted unread; the count says none moved."""
    old = tmp_path / "journal.sqlite3"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE something_else (x)")  # no pending_debits table: not a journal this code knows
    db.commit()
    db.close()
    journal = Journal(queue, KEY)
    assert journal.adopt(old) == 0
    assert old.exists()
    assert journal.all_pending() == []
