"""Tearing through pcscd and vpcd: the card pulled at each step of the purchase and brought
back, the PSAM pulled at MAC2, and cards that never come back. Per card, the debits on the
card equal the rides recorded, and every committed debit has its record."""

from __future__ import annotations

from typing import Any

import pytest

from protocols.tunion import TransactionRecord
from tests.daemon.bench import Purse, local_time
from tests.daemon.expected import RECORD_FIELDS, assert_documented, token
from tests.daemon.scenarios import (
    CARD_TEARS,
    INS_SELECT,
    SELECT_EF05,
    TearingRun,
    TearStep,
    TornTap,
    select_purchase_app,
)

FARE = 200
TAP_AGAIN = "请重新刷卡 Tap again"


def _id(step: TearStep) -> str:
    return f"{step.name}-{step.when}"


def _step(run: TearingRun, index: int) -> TornTap:
    torn = run.card_tears[index]
    assert torn.step == CARD_TEARS[index]
    return torn


def _debits(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [record for record in records if record["tac"] is not None]


def _match(debit: TransactionRecord, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The one record of a debit the card logged (each ride has its own time), among the records
    of debits: with a TAC, or unconfirmed."""
    found = [
        r
        for r in records
        if (r["tac"] is not None or r["result"] == "unconfirmed")
        and (r["fare"], local_time(r)) == (debit.amount, debit.time)
    ]
    assert len(found) == 1, f"{debit} has {len(found)} records"
    return found[0]


@pytest.mark.parametrize("index", range(len(CARD_TEARS)), ids=[_id(s) for s in CARD_TEARS])
def test_tear_and_return(tearing_run: TearingRun, index: int) -> None:
    torn = _step(tearing_run, index)
    step, tap = torn.step, torn.tap
    assert torn.torn_command is not None and torn.torn_command[1] == step.ins, "the tear hit the planned command"
    if step.ins == INS_SELECT:
        assert torn.torn_command == select_purchase_app()
        assert SELECT_EF05 in torn.commands_before_tear, "the e-purse's SELECT, after the SSSE read"
    first, back = tap.signals
    assert (first.lines[0], first.beep) == (TAP_AGAIN, "warning")
    assert back.beep == "ok"
    debits = _debits(tap.records)
    assert len(debits) == 1 and debits[0]["result"] == "accepted"
    assert tap.before is not None and tap.after is not None
    assert tap.after.atc == tap.before.atc + 1 and tap.after.balance == tap.before.balance - FARE
    assert _match(tap.after.debits_since(tap.before)[0], tap.records) is debits[0]
    assert torn.pending_after == 0
    assert all(set(record) == RECORD_FIELDS for record in tap.records)


@pytest.mark.parametrize(
    "index", [i for i, s in enumerate(CARD_TEARS) if s.name != "debit"], ids=lambda i: _id(CARD_TEARS[i])
)
def test_tear_before_debit_records_the_attempt_and_charges_on_return(tearing_run: TearingRun, index: int) -> None:
    records = _step(tearing_run, index).tap.records
    assert [(r["result"], r["reason"]) for r in records] == [("denied", "card_removed"), ("accepted", "ok")]
    assert records[0]["tap_id"] < records[1]["tap_id"]


def test_debit_torn_before_the_card_saw_it(tearing_run: TearingRun) -> None:
    """GET TRANSACTION PROOF says 9406: the torn tap is a denied attempt, the ride is charged now."""
    index = CARD_TEARS.index(next(s for s in CARD_TEARS if (s.name, s.when) == ("debit", "before")))
    records = _step(tearing_run, index).tap.records
    attempt, ride = records
    assert (attempt["result"], attempt["reason"], attempt["tac"]) == ("denied", "card_removed", None)
    assert (ride["result"], ride["recovered"], ride["mac2_verified"]) == ("accepted", False, True)
    assert attempt["tap_id"] < ride["tap_id"]


def test_debit_torn_after_the_card_committed(tearing_run: TearingRun) -> None:
    """GET TRANSACTION PROOF gives the torn debit's TAC: recorded once, as recovered, not charged again."""
    index = CARD_TEARS.index(next(s for s in CARD_TEARS if (s.name, s.when) == ("debit", "after")))
    torn = _step(tearing_run, index)
    (record,) = torn.tap.records
    assert (record["result"], record["recovered"], record["mac2_verified"]) == ("accepted", True, True)
    assert torn.proof_tac is not None and record["tac"] == torn.proof_tac.hex().upper()


def test_psam_pulled_at_mac2(tearing_run: TearingRun) -> None:
    """The card has debited when the PSAM leaves: the ride stands (TAC kept, MAC2 unverified),
    passback applies, and the PSAM serves again once back."""
    run = tearing_run
    assert run.psam_torn and run.psam_back
    tap = run.psam_tear
    record = tap.record
    assert (record["result"], record["reason"], record["mac2_verified"]) == ("accepted", "ok", False)
    assert record["tac"] is not None and record["fare"] == FARE
    assert tap.before is not None and tap.after is not None
    assert tap.after.balance == tap.before.balance - FARE
    again = run.again_after_psam_tear
    assert again.record["reason"] == "already_paid"
    assert again.after == again.before


def test_sichuan_debits_equal_its_accepted_rides(tearing_run: TearingRun) -> None:
    run = tearing_run
    mine = [r for r in run.queued if r["card_token"] == token(run.token_key, "sichuan")]
    rides = [r for r in mine if r["result"] == "accepted"]
    card_debits = Purse.of(run.sichuan).debits_since(run.sichuan_start)
    assert len(card_debits) == len(rides) == len(_debits(mine)) == len(CARD_TEARS) + 1
    assert {id(_match(debit, rides)) for debit in card_debits} == {id(ride) for ride in rides}
    assert run.sichuan_start.balance - run.sichuan.memory.balance == FARE * len(rides)
    assert [r["recovered"] for r in rides].count(True) == 1


def test_a_card_that_does_not_come_back_is_recorded_unconfirmed(tearing_run: TearingRun) -> None:
    run = tearing_run
    assert run.gone.records == [] and run.gone.signals[0].lines[0] == TAP_AGAIN
    assert (run.pending_inside_window, run.records_inside_window) == (1, 0)
    (record,) = run.settled_by_supervise
    assert (record["result"], record["reason"], record["fare"]) == ("unconfirmed", "debit_unconfirmed", FARE)
    assert run.pending_after_supervise == 0
    serial = run.chongqing.profile.tunion.public.application_serial if run.chongqing.profile.tunion else ""
    assert record["application_serial_masked"] == "*" * 16 + serial[-4:]
    assert set(record) == RECORD_FIELDS | {"application_serial_masked"}
    assert record["record_type"] == "grey"
    assert_documented(record)


def test_the_next_start_records_a_debit_left_pending(tearing_run: TearingRun) -> None:
    run = tearing_run
    assert (run.pending_before_restart, run.pending_after_restart) == (1, 0)
    unconfirmed = [r for r in run.queued if r["result"] == "unconfirmed"]
    assert len(unconfirmed) == 2
    assert run.queued[: len(run.published)] == run.published
    assert run.queued[len(run.published) :] == [unconfirmed[1]]


def test_chongqing_debits_each_have_their_record(tearing_run: TearingRun) -> None:
    run = tearing_run
    card_debits = Purse.of(run.chongqing).debits_since(run.chongqing_start)
    unconfirmed = [r for r in run.queued if r["result"] == "unconfirmed"]
    assert len(card_debits) == len(unconfirmed) == 2
    for earlier, debit in enumerate(reversed(card_debits)):
        record = _match(debit, unconfirmed)
        assert record["atc"] == debit.atc - 1, "the ATC the card reported at INITIALIZE, as in accepted records"
        own_before = run.chongqing_start.balance - FARE * earlier
        assert record["balance_before"] == own_before, "own money, the overdraft allowance not counted"
        assert record["card_token"] == token(run.token_key, "chongqing")
