"""The venue gate's entry decision without readers: every rule and its boundary."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from reader.daemon.policy import Outcome, Reason
from reader.daemon.venue_policy import (
    PriceBand,
    Slot,
    VenueRules,
    VenueTap,
    decide_entry,
    price_band_for,
    reservation_reason,
)

TEN = dt.datetime(2026, 5, 20, 10, 0)
SLOT = Slot(TEN, TEN + dt.timedelta(hours=1))
RULES = VenueRules(
    ("51",),
    price=4000,
    bands=(PriceBand("senior", 60, 2000), PriceBand("elder", 65, 0)),
    capacity=100,
)
TAP = VenueTap(
    region="510104",
    hotlisted=False,
    issued=dt.date(2023, 3, 1),
    expiry=dt.date(2033, 3, 1),
    birth_date=dt.date(1990, 1, 1),
)


def decide(**changes: object) -> tuple[Outcome, Reason, int | None, str | None]:
    now = changes.pop("now", TEN)
    rules = changes.pop("rules", RULES)
    assert isinstance(now, dt.datetime) and isinstance(rules, VenueRules)
    decision = decide_entry(dataclasses.replace(TAP, **changes), rules, now)
    fare = decision.fare
    return decision.outcome, decision.reason, fare.amount if fare else None, fare.band if fare else None


def test_entry_at_the_price_of_the_band_reached_from_the_birthday() -> None:
    assert decide() == (Outcome.ACCEPTED, Reason.VENUE_ENTRY, 4000, None)
    assert decide(birth_date=dt.date(1966, 5, 20)) == (Outcome.ACCEPTED, Reason.VENUE_ENTRY, 2000, "senior")
    assert decide(birth_date=dt.date(1966, 5, 21))[2:] == (4000, None)
    assert decide(birth_date=dt.date(1961, 5, 20))[2:] == (0, "elder")


def test_an_unknown_birth_date_pays_the_full_price() -> None:
    assert decide(birth_date=None)[2:] == (4000, None)
    assert price_band_for(None, RULES.bands) is None


def test_once_a_day_comes_before_the_capacity() -> None:
    assert decide(entered_today=True, entries_today=100)[:2] == (Outcome.DENIED, Reason.ALREADY_ENTERED)
    assert decide(entered_today=True, rules=dataclasses.replace(RULES, once_a_day=False))[1] is Reason.VENUE_ENTRY


def test_the_capacity_admits_up_to_its_number() -> None:
    assert decide(entries_today=99)[1] is Reason.VENUE_ENTRY
    assert decide(entries_today=100)[:2] == (Outcome.DENIED, Reason.VENUE_FULL)
    assert decide(entries_today=10**6, rules=dataclasses.replace(RULES, capacity=None))[1] is Reason.VENUE_ENTRY


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (TEN - dt.timedelta(minutes=16), Reason.RESERVATION_SLOT_MISSED),
        (TEN - dt.timedelta(minutes=15), Reason.VENUE_ENTRY_RESERVED),
        (TEN + dt.timedelta(minutes=59, seconds=59), Reason.VENUE_ENTRY_RESERVED),
        (TEN + dt.timedelta(hours=1), Reason.RESERVATION_SLOT_MISSED),
        (TEN + dt.timedelta(days=1), Reason.NOT_RESERVED),
    ],
)
def test_a_reservation_admits_in_its_slot_from_the_early_margin_until_before_its_end(
    now: dt.datetime, reason: Reason
) -> None:
    assert reservation_reason((SLOT,), now, dt.timedelta(minutes=15)) is reason


def test_with_reservations_required_entry_needs_one() -> None:
    rules = dataclasses.replace(RULES, reservations_required=True)
    assert decide(rules=rules)[:2] == (Outcome.DENIED, Reason.NOT_RESERVED)
    assert decide(rules=rules, slots=(SLOT,)) == (Outcome.ACCEPTED, Reason.VENUE_ENTRY_RESERVED, 4000, None)
    late = TEN + dt.timedelta(hours=2)
    assert decide(rules=rules, slots=(SLOT,), now=late)[:2] == (Outcome.DENIED, Reason.RESERVATION_SLOT_MISSED)
    assert decide(rules=rules, slots=(SLOT,), entries_today=100)[1] is Reason.VENUE_FULL


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"hotlisted": True}, Reason.HOTLISTED),
        ({"region": "500103"}, Reason.REGION_NOT_ACCEPTED),
        ({"expiry": dt.date(2026, 5, 19)}, Reason.EXPIRED),
        ({"issued": dt.date(2026, 5, 21)}, Reason.NOT_YET_VALID),
    ],
)
def test_refusals(changes: dict[str, object], reason: Reason) -> None:
    assert decide(**changes)[:2] == (Outcome.DENIED, reason)


def test_validity_is_inclusive() -> None:
    assert decide(expiry=TEN.date(), issued=TEN.date())[1] is Reason.VENUE_ENTRY
