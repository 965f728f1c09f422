"""A bus validator through pcscd and vpcd: the decision and the purse for every bundled card."""

from __future__ import annotations

import datetime as dt

import pytest

from sscard_sim.card import VirtualCard
from sscard_sim.profile import bundled_profiles
from tests.daemon.bench import CARD_PROFILES, TAP_DAY, Purse, local_time
from tests.daemon.expected import BUS, RECORD_FIELDS, assert_documented, assert_identifies, token
from tests.daemon.scenarios import BusRun


def test_every_bundled_card_profile_has_an_expected_decision() -> None:
    cards = {name for name in bundled_profiles() if not name.endswith("psam")}
    assert cards == set(CARD_PROFILES) == set(BUS)


@pytest.mark.parametrize("name", CARD_PROFILES)
def test_decision(bus_run: BusRun, name: str) -> None:
    expected = BUS[name]
    tap = bus_run.first[name]
    record = tap.record
    assert (record["result"], record["reason"]) == (expected.result, expected.reason)
    assert record["fare"] == expected.fare
    assert record["concession"] == expected.band
    assert_identifies(record, bus_run.token_key, name, expected)
    assert len(tap.signals) == 1
    assert (tap.signals[0].beep == "ok") == (expected.result == "accepted")


@pytest.mark.parametrize("name", CARD_PROFILES)
def test_purse(bus_run: BusRun, name: str) -> None:
    """A debit moves the fare from the purse and counts one transaction; nothing else touches it."""
    expected = BUS[name]
    tap = bus_run.first[name]
    record = tap.record
    if tap.before is None or tap.after is None:  # no T-Union on the card
        assert record["balance_before"] is None and record["tac"] is None
        return
    before, after = tap.before, tap.after
    if not expected.debits:
        assert after == before
        assert (record["balance_after"], record["atc"], record["tac"], record["psam_sequence"]) == (None,) * 4
        if record["balance_before"] is not None:
            assert record["balance_before"] == before.balance, "own money, the overdraft allowance not counted"
        return
    fare = expected.fare
    assert fare is not None
    assert after.balance == before.balance - fare
    assert after.atc == before.atc + 1
    assert record["balance_before"] == before.balance, "own money, the overdraft allowance not counted"
    assert record["balance_before"] - record["balance_after"] == fare
    assert record["atc"] == before.atc, "the ATC the card reported at INITIALIZE"
    assert len(record["tac"]) == 8 and int(record["tac"], 16) >= 0
    assert isinstance(record["psam_sequence"], int)
    assert (record["mac2_verified"], record["recovered"]) == (True, False)
    (logged,) = after.debits_since(before)
    assert (logged.amount, logged.time) == (fare, local_time(record))


def test_free_ride_is_recorded_without_touching_the_purse(bus_run: BusRun) -> None:
    tap = bus_run.first["elderly"]
    assert tap.before is not None and tap.after == tap.before
    assert tap.signals[0].lines == ("免费乘车 elder", "余额 12.00"), "a free ride, and what the purse still holds"


def test_records_are_what_was_committed(bus_run: BusRun) -> None:
    assert bus_run.queued == bus_run.published
    ids = [record["tap_id"] for record in bus_run.queued]
    assert len(set(ids)) == len(ids) == len(CARD_PROFILES) + 3
    assert ids == sorted(ids), "tap ids are time-ordered"
    for record in bus_run.queued:
        assert set(record) == RECORD_FIELDS
        assert_documented(record)
        assert (record["terminal_id"], record["profile"], record["reader"]) == (
            bus_run.config.terminal.id,
            "bus",
            "pcsc-contactless",
        )
        when = dt.datetime.fromisoformat(record["time"])
        assert when.utcoffset() == dt.timedelta(hours=8)
        assert when.date() == TAP_DAY.date()


def test_same_line_again_after_the_window_pays_the_full_fare(bus_run: BusRun) -> None:
    """Sixty seconds after the paid ride: a new ride on the same line, no transfer discount."""
    record = bus_run.window_over.record
    assert (record["result"], record["fare"], record["transfer"]) == ("accepted", 200, False)
    assert bus_run.window_over.before is not None and bus_run.window_over.after is not None
    assert bus_run.window_over.after.balance == bus_run.window_over.before.balance - 200


def test_transfer_to_another_line_within_the_window(bus_run: BusRun) -> None:
    """Line 815 ten minutes after a ride on 812: ¥1.00 off, read from the card's 0x1E log."""
    tap = bus_run.transfer
    record = tap.record
    assert (record["result"], record["fare_base"], record["fare"], record["transfer"]) == ("accepted", 200, 100, True)
    assert tap.before is not None and tap.after is not None
    assert tap.after.balance == tap.before.balance - 100
    assert bus_run.queued_other_line == [record]


def test_card_purses_add_up(bus_run: BusRun) -> None:
    """Over the whole run, each card lost exactly the fares of the debits recorded for it."""
    records = bus_run.queued + bus_run.queued_other_line
    for name, card in bus_run.cards.items():
        if card.tunion is None:
            continue
        start, now = Purse.of(VirtualCard.from_profile(name)), Purse.of(card)
        if name == "cloned":  # it carries the Sichuan card's number, and was never charged
            assert now == start
            continue
        paid = [r for r in records if r["tac"] and r["card_token"] == token(bus_run.token_key, name)]
        assert all(r["result"] == "accepted" for r in paid)
        assert start.balance - now.balance == sum(r["fare"] for r in paid), name
        assert len(now.debits_since(start)) == len(paid), name
