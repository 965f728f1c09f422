"""A full queue (max_taps = 2, the back office not answering): taps are refused as out of
service before any money moves, a torn debit waits in the journal instead of crashing the
daemon, and service resumes once the uplink's deliveries are acknowledged."""

from __future__ import annotations

from reader.daemon.feedback import signal_for
from reader.daemon.policy import Decision, Outcome, Reason
from tests.daemon.scenarios import OutOfServiceRun


def test_taps_until_the_queue_is_full(out_of_service_run: OutOfServiceRun) -> None:
    run = out_of_service_run
    assert run.torn.records == [], "a torn debit is journalled, not recorded yet"
    assert (run.first.record["result"], run.first.record["fare"]) == ("accepted", 200)
    assert (run.second.record["result"], run.second.record["concession"]) == ("accepted", "elder")
    delivered = [record["tap_id"] for record in run.delivered_before_resume]
    assert delivered == [run.first.record["tap_id"], run.second.record["tap_id"]]


def test_a_full_queue_refuses_before_any_money_moves(out_of_service_run: OutOfServiceRun) -> None:
    run = out_of_service_run
    refused = run.refused
    assert refused.records == []
    assert refused.signals == (signal_for(Decision(Outcome.DENIED, Reason.OUT_OF_SERVICE)),)
    assert refused.before is not None and refused.after == refused.before
    assert run.status_when_full["queue"]["out_of_service"] == "queue_full"
    assert run.status_when_full["queue"]["depth"] == 2
    assert run.status_line_when_full.startswith("out of service")


def test_a_torn_debit_waits_for_room_in_the_queue(out_of_service_run: OutOfServiceRun) -> None:
    """Past the tearing window with the queue full, supervise() keeps the debit in the journal."""
    run = out_of_service_run
    assert run.supervise_error is None
    assert run.pending_while_full == 1
    (record,) = run.settled
    assert (record["result"], record["reason"]) == ("unconfirmed", "debit_unconfirmed")


def test_service_resumes_once_rows_are_acknowledged(out_of_service_run: OutOfServiceRun) -> None:
    run = out_of_service_run
    assert run.drained
    tap = run.resumed
    assert (tap.record["result"], tap.record["reason"], tap.record["fare"]) == ("accepted", "ok", 200)
    assert tap.before is not None and tap.after is not None
    assert tap.after.balance == tap.before.balance - 200


def test_the_back_office_got_every_record_once(out_of_service_run: OutOfServiceRun) -> None:
    run = out_of_service_run
    sent = {record["tap_id"]: record for record in run.published}
    assert len(sent) == 4
    assert {tap_id: record for (_, tap_id), record in run.delivered.items()} == sent
    assert {record["tap_id"] for record in run.queued} <= set(sent)
