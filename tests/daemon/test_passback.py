"""Passback on a bus validator: the same card again inside the window is told "already paid"
and not charged, also by a daemon restarted on the same state directory."""

from __future__ import annotations

from tests.daemon.scenarios import BusRun


def test_same_card_at_once_is_already_paid_and_not_charged(bus_run: BusRun) -> None:
    tap = bus_run.passback
    record = tap.record
    assert (record["result"], record["reason"]) == ("denied", "already_paid")
    assert record["card_token"] == bus_run.first["sichuan"].record["card_token"]
    assert record["tac"] is None and record["fare"] is None
    assert tap.before is not None and tap.after == tap.before
    assert tap.signals[0].beep == "warning"


def test_the_journal_survives_a_restart(bus_run: BusRun) -> None:
    """A new daemon on the same state directory, 30 s after the paid ride: still already paid."""
    tap = bus_run.after_restart
    record = tap.record
    assert (record["result"], record["reason"]) == ("denied", "already_paid")
    assert tap.before is not None and tap.after == tap.before


def test_the_window_is_half_open(bus_run: BusRun) -> None:
    """Exactly passback_seconds after the paid ride the card rides, and pays, again."""
    record = bus_run.window_over.record
    assert (record["result"], record["reason"]) == ("accepted", "ok")
    assert bus_run.window_over.after is not None and bus_run.window_over.before is not None
    assert bus_run.window_over.after.atc == bus_run.window_over.before.atc + 1
