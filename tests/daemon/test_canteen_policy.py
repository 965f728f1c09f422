"""The canteen's meal decision without readers: every rule and its boundary."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from reader.daemon.canteen_policy import (
    CanteenRules,
    MealPeriod,
    MealTap,
    counts_as_discounted,
    decide_meal,
    meal_fare,
    meal_period_at,
    parse_clock,
)
from reader.daemon.fares import AgeBand
from reader.daemon.policy import Outcome, Reason

LUNCH = MealPeriod("lunch", dt.time(11, 0), dt.time(13, 30))
DINNER = MealPeriod("dinner", dt.time(17, 0), dt.time(19, 30))
SENIOR, ELDER = AgeBand("senior", 60, 80), AgeBand("elder", 80, 0)
RULES = CanteenRules(
    ("51",), "purse", (SENIOR, ELDER), (LUNCH, DINNER), discounted_meals=1, repeat=dt.timedelta(seconds=30)
)
NOON = dt.datetime(2026, 5, 20, 12, 0)
TAP = MealTap(
    region="510104",
    hotlisted=False,
    issued=dt.date(2023, 3, 1),
    expiry=dt.date(2033, 3, 1),
    birth_date=dt.date(1966, 5, 20),  # 60 on the day of NOON
    price=1500,
    price_fixed=False,
    balance=5000,
)


def decide(**changes: object) -> tuple[Outcome, Reason, int | None, str | None]:
    now = changes.pop("now", NOON)
    rules = changes.pop("rules", RULES)
    assert isinstance(now, dt.datetime) and isinstance(rules, CanteenRules)
    decision = decide_meal(dataclasses.replace(TAP, **changes), rules, now)
    fare = decision.fare
    return decision.outcome, decision.reason, fare.amount if fare else None, fare.band if fare else None


def test_the_band_applies_from_the_birthday_itself() -> None:
    assert decide() == (Outcome.ACCEPTED, Reason.MEAL_CHARGED, 1200, "senior")
    assert decide(now=NOON - dt.timedelta(days=1)) == (Outcome.ACCEPTED, Reason.MEAL_CHARGED, 1500, None)


def test_a_zero_percent_band_eats_free_and_the_highest_band_reached_applies() -> None:
    assert decide(birth_date=dt.date(1946, 5, 20)) == (Outcome.ACCEPTED, Reason.MEAL_CHARGED, 0, "elder")


def test_the_discount_rounds_down_to_the_fen() -> None:
    assert meal_fare(1555, SENIOR).amount == 1244  # 80 % of 15.55 yuan is 12.44
    assert meal_fare(999, SENIOR).amount == 799


def test_the_cap_is_per_meal_period_and_beyond_it_the_meal_is_at_full_price() -> None:
    assert decide(discounted_today=0)[1] is Reason.MEAL_CHARGED
    assert decide(discounted_today=1) == (Outcome.ACCEPTED, Reason.MEAL_DISCOUNT_USED, 1500, None)
    two = dataclasses.replace(RULES, discounted_meals=2)
    assert decide(discounted_today=1, rules=two)[1:] == (Reason.MEAL_CHARGED, 1200, "senior")


def test_a_holder_in_no_band_is_never_capped() -> None:
    assert decide(birth_date=dt.date(1990, 1, 1), discounted_today=5)[1:] == (Reason.MEAL_CHARGED, 1500, None)


@pytest.mark.parametrize(
    ("clock", "period"),
    [("10:59", None), ("11:00", "lunch"), ("13:29", "lunch"), ("13:30", None), ("17:00", "dinner")],
)
def test_meal_periods_include_their_start_and_exclude_their_end(clock: str, period: str | None) -> None:
    found = meal_period_at((LUNCH, DINNER), parse_clock(clock))
    assert (found.name if found else None) == period


def test_outside_every_meal_period_there_is_no_discount() -> None:
    assert decide(now=NOON.replace(hour=13, minute=30)) == (Outcome.ACCEPTED, Reason.MEAL_CHARGED, 1500, None)


def test_paid_at_the_pos_the_purse_is_not_asked_for_funds() -> None:
    pos = dataclasses.replace(RULES, payment="pos")
    assert decide(rules=pos, balance=0) == (Outcome.ACCEPTED, Reason.MEAL_PAY_AT_POS, 1200, "senior")
    assert decide(rules=pos, discounted_today=1)[1] is Reason.MEAL_DISCOUNT_USED


def test_funds_are_checked_against_the_discounted_price_with_the_overdraft() -> None:
    assert decide(balance=1199)[:2] == (Outcome.DENIED, Reason.INSUFFICIENT_BALANCE)
    assert decide(balance=1200)[1] is Reason.MEAL_CHARGED
    assert decide(balance=1000, overdraft_limit=200)[1] is Reason.MEAL_CHARGED


def test_without_a_price_the_meal_is_refused() -> None:
    assert decide(price=None)[:2] == (Outcome.DENIED, Reason.NO_MEAL_PRICE)


def test_a_double_tap_at_the_fixed_price_is_refused_within_the_window_only() -> None:
    last = NOON - dt.timedelta(seconds=29)
    assert decide(price_fixed=True, last_meal=last)[1] is Reason.ALREADY_PAID
    assert decide(price_fixed=True, last_meal=NOON - dt.timedelta(seconds=30))[1] is Reason.MEAL_CHARGED
    assert decide(price_fixed=False, last_meal=last)[1] is Reason.MEAL_CHARGED, "the POS priced this meal"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"hotlisted": True}, Reason.HOTLISTED),
        ({"region": "500103"}, Reason.REGION_NOT_ACCEPTED),
        ({"expiry": dt.date(2026, 5, 19)}, Reason.EXPIRED),
        ({"issued": dt.date(2026, 5, 21)}, Reason.NOT_YET_VALID),
        ({"purse_expiry": dt.date(2026, 5, 19)}, Reason.EXPIRED),
    ],
)
def test_refusals(changes: dict[str, object], reason: Reason) -> None:
    assert decide(**changes)[:2] == (Outcome.DENIED, reason)


def test_validity_is_inclusive_and_the_purse_dates_count_only_when_it_pays() -> None:
    assert decide(expiry=NOON.date(), purse_expiry=NOON.date())[1] is Reason.MEAL_CHARGED
    pos = dataclasses.replace(RULES, payment="pos")
    assert decide(rules=pos, purse_expiry=dt.date(2020, 1, 1))[1] is Reason.MEAL_PAY_AT_POS


def test_only_a_discounted_meal_counts_against_the_cap() -> None:
    assert counts_as_discounted("meal_charged", "senior")
    assert counts_as_discounted("meal_pay_at_pos", "senior")
    assert not counts_as_discounted("meal_charged", None)
    assert not counts_as_discounted("meal_discount_used", None)
    assert not counts_as_discounted("already_paid", "senior")
