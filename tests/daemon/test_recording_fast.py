"""`Recorder`: a tap's record and its one commit with the journal's settlement, on the real queue.

The record and the settlement of the tap's journalled debit (and the card's passback mark)
are one transaction of the queue's database; these tests read both back from the files
(`TapQueue.iter_taps`, `Journal.pending`, `Journal.last`). The charged taps themselves are
judged in test_charge_fast.py; here each way of building and committing a record is driven
on its own, with the outcomes a terminal kind hands over.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from protocols.purchase import Recovery
from reader.daemon.fares import Fare
from reader.daemon.journal import CardMark, PendingDebit
from reader.daemon.outcome import CardRef, PurseOutcome, TapOutcome
from reader.daemon.policy import Decision, Outcome, Reason
from reader.daemon.record import Debit
from reader.daemon.recording import Recorder
from reader.uplink.errors import OutOfServiceError
from reader.uplink.hotlist import encode_hotlist
from tests.daemon.bench import TAP_DAY
from tests.daemon.fast_rig import READER, Rig
from tests.support.taps import tap_record


@pytest.fixture(autouse=True)
def _named_in_the_logs() -> Iterator[None]:
    """As the driver loop does: every event of a tap driven from here names a tap and the reader."""
    with structlog.contextvars.bound_contextvars(tap_id="driven-directly", reader=READER):
        yield


SERIAL = "03104510100000009991"
CARD = CardRef("b" * 64, "510100")
FARE = Fare(200, 200, False, None)
PAID = Decision(Outcome.ACCEPTED, Reason.OK, FARE)
DEBIT = Debit(5000, 4800, 17, "C33026CA", 9, True)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Rig(tmp_path / "bus") as terminal:
        yield terminal


def recorder(rig: Rig) -> Recorder:
    return Recorder(rig.services, READER)


def journal_debit(rig: Rig, tap_id: str = "T-TORN") -> None:
    recovery = Recovery(SERIAL, 17, 0x09, 200, 5000, bytes.fromhex("510100000001"), 9, TAP_DAY.replace(tzinfo=None))
    rig.services.journal.begin_debit(PendingDebit(tap_id, recovery, TAP_DAY, CARD.token, CARD.region))


def test_the_record_carries_the_decision_the_card_the_debit_and_the_versions(rig: Rig) -> None:
    rig.services.hotlist.install(encode_hotlist(7, [b"\x01" * 32]))
    outcome = TapOutcome(PAID, CARD, PurseOutcome(debit=DEBIT, settles=SERIAL))
    record = recorder(rig).record(outcome, "T-1", TAP_DAY, 12)
    assert {k: v for k, v in record.items() if v is not None} == {
        "schema_version": 2,
        "record_type": "tap",
        "tap_id": "T-1",
        "terminal_id": rig.config.terminal.id,
        "profile": "bus",
        "reader": READER,
        "time": "2026-05-20T09:00:00.000+08:00",
        "result": "accepted",
        "reason": "ok",
        "card_token": CARD.token,
        "region": CARD.region,
        "fare": 200,
        "fare_base": 200,
        "transfer": False,
        "balance_before": 5000,
        "balance_after": 4800,
        "atc": 17,
        "tac": "C33026CA",
        "psam_sequence": 9,
        "mac2_verified": True,
        "recovered": False,
        "overdraft_allowance": 0,
        "hotlist_version": "7",
        "parameters_version": 12,
    }


def test_a_refusal_records_the_balance_and_no_money(rig: Rig) -> None:
    outcome = TapOutcome(Decision(Outcome.DENIED, Reason.INSUFFICIENT_BALANCE, FARE), CARD, PurseOutcome(balance=50))
    record = recorder(rig).record(outcome, "T-2", TAP_DAY)
    assert (record["balance_before"], record["balance_after"], record["tac"], record["parameters_version"]) == (
        50,
        None,
        None,
        None,
    )


def test_a_tap_without_a_card_or_purse_records_neither(rig: Rig) -> None:
    record = recorder(rig).record(TapOutcome(Decision(Outcome.DENIED, Reason.CARD_READ_FAILED)), "T-3", TAP_DAY)
    assert (record["card_token"], record["region"], record["balance_before"], record["atc"]) == (None,) * 4


def test_a_recovered_debit_is_recorded_under_its_own_tap_id_and_time(rig: Rig) -> None:
    earlier = TAP_DAY - dt.timedelta(seconds=20)
    outcome = TapOutcome(PAID, CARD, PurseOutcome(debit=DEBIT, original=("T-TORN", earlier)))
    record = recorder(rig).record(outcome, "T-NOW", TAP_DAY)
    assert (record["tap_id"], record["time"]) == ("T-TORN", "2026-05-20T08:59:40.000+08:00")


def test_the_commit_settles_the_debit_and_marks_the_card_in_the_records_transaction(rig: Rig) -> None:
    journal_debit(rig)
    outcome = TapOutcome(PAID, CARD, PurseOutcome(debit=DEBIT, settles=SERIAL, mark=(CardMark.PAID, TAP_DAY)))
    rec = recorder(rig)
    rec.commit(rec.record(outcome, "T-TORN", TAP_DAY), outcome)
    assert [r["tap_id"] for r in rig.records()] == ["T-TORN"]
    assert rig.services.journal.pending(SERIAL) is None
    assert rig.services.journal.last(CARD.token, CardMark.PAID) == TAP_DAY


def test_a_mark_alone_is_committed_too(rig: Rig) -> None:
    """A free ride settles no debit but marks the card as paid (passback)."""
    journal_debit(rig)
    outcome = TapOutcome(PAID, CARD, PurseOutcome(balance=10, mark=(CardMark.PAID, TAP_DAY)))
    rec = recorder(rig)
    rec.commit(rec.record(outcome, "T-FREE", TAP_DAY), outcome)
    assert rig.services.journal.last(CARD.token, CardMark.PAID) == TAP_DAY
    assert rig.services.journal.pending(SERIAL) is not None, "another tap's debit is left alone"


def test_a_mark_needs_the_card_it_is_for(rig: Rig) -> None:
    outcome = TapOutcome(PAID, None, PurseOutcome(balance=10, mark=(CardMark.PAID, TAP_DAY)))
    rec = recorder(rig)
    rec.commit(rec.record(outcome, "T-ANON", TAP_DAY), outcome)
    assert [r["tap_id"] for r in rig.records()] == ["T-ANON"]
    assert rig.services.journal.last(CARD.token, CardMark.PAID) is None


def test_marks_older_than_the_passback_window_are_pruned_at_the_next_commit(rig: Rig) -> None:
    rec = recorder(rig)
    old = CardRef("c" * 64, "510100")
    first = TapOutcome(PAID, old, PurseOutcome(mark=(CardMark.PAID, TAP_DAY)))
    rec.commit(rec.record(first, "T-OLD", TAP_DAY), first)
    later = TAP_DAY + dt.timedelta(seconds=59)
    second = TapOutcome(PAID, CARD, PurseOutcome(mark=(CardMark.PAID, later)))
    rec.commit(rec.record(second, "T-NEW", later), second)
    assert rig.services.journal.last(old.token, CardMark.PAID) == TAP_DAY, "within the 60 s window"
    latest = TAP_DAY + dt.timedelta(seconds=61)
    third = TapOutcome(PAID, CARD, PurseOutcome(mark=(CardMark.PAID, latest)))
    rec.commit(rec.record(third, "T-LAST", latest), third)
    assert rig.services.journal.last(old.token, CardMark.PAID) is None


def test_a_record_already_queued_settles_the_debit_and_raises_nothing(rig: Rig) -> None:
    journal_debit(rig)
    rig.services.queue.enqueue({**tap_record(0, terminal_id=rig.config.terminal.id), "tap_id": "T-TORN"})
    outcome = TapOutcome(PAID, CARD, PurseOutcome(debit=DEBIT, settles=SERIAL))
    rec = recorder(rig)
    rec.commit(rec.record(outcome, "T-TORN", TAP_DAY), outcome)
    assert len(rig.records()) == 1
    assert rig.services.journal.pending(SERIAL) is None


def test_a_duplicate_without_a_debit_to_settle_leaves_the_journal_alone(rig: Rig) -> None:
    journal_debit(rig)
    rig.services.queue.enqueue({**tap_record(0, terminal_id=rig.config.terminal.id), "tap_id": "T-AGAIN"})
    outcome = TapOutcome(Decision(Outcome.DENIED, Reason.CARD_READ_FAILED))
    rec = recorder(rig)
    rec.commit(rec.record(outcome, "T-AGAIN", TAP_DAY), outcome)
    assert rig.services.journal.pending(SERIAL) is not None


def test_a_queue_that_refuses_the_record_commits_nothing(tmp_path: Path) -> None:
    with Rig(tmp_path / "bus", queue={"max_taps": 1}) as rig:
        journal_debit(rig)
        rig.services.queue.enqueue(tap_record(0, terminal_id=rig.config.terminal.id))
        outcome = TapOutcome(PAID, CARD, PurseOutcome(debit=DEBIT, settles=SERIAL, mark=(CardMark.PAID, TAP_DAY)))
        rec = recorder(rig)
        with pytest.raises(OutOfServiceError):
            rec.commit(rec.record(outcome, "T-TORN", TAP_DAY), outcome)
        assert rig.services.journal.pending(SERIAL) is not None
        assert rig.services.journal.last(CARD.token, CardMark.PAID) is None
