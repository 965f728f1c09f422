"""Every offline rule at its boundaries, without readers."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from reader.daemon.fare_settings import bus_fare_rules
from reader.daemon.fares import FareRide
from reader.daemon.policy import (
    AgeBand,
    BusRules,
    BusTap,
    HolderRules,
    HolderTap,
    Outcome,
    Reason,
    age_on,
    band_for,
    decide_bus,
    decide_holder,
    has_funds,
    region_accepted,
    validity_reason,
    within_passback,
)

BANDS = (AgeBand("senior", 65, 50), AgeBand("elder", 70, 0))


def rules(fare: int = 200, discount: int = 100) -> BusRules:
    fares = bus_fare_rules(
        line="812", fare=fare, age_bands=BANDS, transfer_discount=discount, transfer_window_minutes=90
    )
    return BusRules(accepted_regions=("51", "50"), passback=dt.timedelta(seconds=60), fares=fares)


RULES = rules()
NOW = dt.datetime(2026, 5, 20, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=8)))
TAP = BusTap(
    region="510100",
    hotlisted=False,
    start=dt.date(2024, 1, 1),
    expiry=dt.date(2034, 1, 1),
    birth_date=dt.date(1990, 6, 1),
    rides=(),
    last_paid=None,
)


@pytest.mark.parametrize(
    ("birth", "day", "age"),
    [
        (dt.date(1956, 5, 20), dt.date(2026, 5, 20), 70),
        (dt.date(1956, 5, 21), dt.date(2026, 5, 20), 69),
        (dt.date(1956, 5, 19), dt.date(2026, 5, 20), 70),
        (dt.date(1956, 2, 29), dt.date(2026, 2, 28), 69),
        (dt.date(1956, 2, 29), dt.date(2026, 3, 1), 70),
        (dt.date(1956, 2, 29), dt.date(2028, 2, 29), 72),
    ],
)
def test_age_counts_from_the_birthday_itself(birth: dt.date, day: dt.date, age: int) -> None:
    assert age_on(birth, day) == age


def test_bands_pick_the_highest_reached() -> None:
    assert band_for(64, BANDS) is None
    assert band_for(65, BANDS) == BANDS[0]
    assert band_for(69, BANDS) == BANDS[0]
    assert band_for(70, BANDS) == BANDS[1]
    assert band_for(None, BANDS) is None


def test_concession_on_the_seventieth_birthday_is_free() -> None:
    tap = replace(TAP, birth_date=dt.date(1956, 5, 20))
    decision = decide_bus(tap, RULES, NOW)
    assert decision.accepted and decision.fare is not None
    assert (decision.fare.amount, decision.fare.band) == (0, "elder")
    day_before = replace(TAP, birth_date=dt.date(1956, 5, 21))
    fare = decide_bus(day_before, RULES, NOW).fare
    assert fare is not None and (fare.amount, fare.band) == (100, "senior")


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        (dt.date(2023, 12, 31), Reason.NOT_YET_VALID),
        (dt.date(2024, 1, 1), None),
        (dt.date(2034, 1, 1), None),
        (dt.date(2034, 1, 2), Reason.EXPIRED),
    ],
)
def test_validity_dates_are_inclusive(day: dt.date, reason: Reason | None) -> None:
    assert validity_reason(day, dt.date(2024, 1, 1), dt.date(2034, 1, 1)) == reason


def test_region_prefixes() -> None:
    assert region_accepted("510100", ("51", "50"))
    assert region_accepted("500101", ("51", "50"))
    assert not region_accepted("330300", ("51", "50"))
    assert not region_accepted("510100", ())


@pytest.mark.parametrize(
    ("seconds_ago", "inside"), [(0, True), (59.999, True), (60, False), (61, False), (-5, False)]
)
def test_passback_window_edges(seconds_ago: float, inside: bool) -> None:
    last = NOW - dt.timedelta(seconds=seconds_ago)
    assert within_passback(last, NOW, dt.timedelta(seconds=60)) is inside
    assert within_passback(None, NOW, dt.timedelta(seconds=60)) is False


def test_passback_is_already_paid_and_not_charged() -> None:
    decision = decide_bus(replace(TAP, last_paid=NOW - dt.timedelta(seconds=10)), RULES, NOW)
    assert (decision.outcome, decision.reason, decision.fare) == (Outcome.DENIED, Reason.ALREADY_PAID, None)


@pytest.mark.parametrize(
    ("balance", "overdraft", "ok"), [(200, 0, True), (199, 0, False), (150, 50, True), (0, 199, False)]
)
def test_balance_equal_to_fare_and_overdraft(balance: int, overdraft: int, ok: bool) -> None:
    assert has_funds(balance, overdraft, 200) is ok


def _ride(minutes_ago: float, line: str = "0101", amount: int = 200) -> FareRide:
    """A paid bus ride, its line as the 0x1E record codes it (2 bytes BCD)."""
    when = NOW.replace(tzinfo=None) - dt.timedelta(minutes=minutes_ago)
    return FareRide(when, bytes.fromhex(line), line.lstrip("0"), amount, "5810", 0x02)


def _fare(tap: BusTap, bus: BusRules = RULES) -> tuple[int, bool]:
    fare = decide_bus(tap, bus, NOW).fare
    assert fare is not None
    return fare.amount, fare.transfer


def test_transfer_discount_inside_the_window_on_another_line() -> None:
    assert _fare(replace(TAP, rides=(_ride(89),))) == (100, True)
    assert _fare(replace(TAP, rides=(_ride(90),))) == (200, False)
    assert _fare(replace(TAP, rides=(_ride(89, line="0812"),))) == (200, False)
    assert _fare(replace(TAP, rides=(_ride(89, amount=0),))) == (200, False)


def test_transfer_then_band_rounds_down() -> None:
    senior = replace(TAP, birth_date=dt.date(1960, 1, 1), rides=(_ride(5),))
    assert _fare(senior, rules(250, 100)) == (75, True)
    assert _fare(replace(senior, birth_date=None), rules(250, 300)) == (0, True)
    assert _fare(replace(TAP, rides=()), rules(250, 100)) == (250, False)


def test_bus_checks_in_order() -> None:
    assert decide_bus(replace(TAP, hotlisted=True, region="330300"), RULES, NOW).reason == Reason.HOTLISTED
    assert decide_bus(replace(TAP, region="330300"), RULES, NOW).reason == Reason.REGION_NOT_ACCEPTED
    assert decide_bus(replace(TAP, expiry=dt.date(2026, 5, 19)), RULES, NOW).reason == Reason.EXPIRED
    accepted = decide_bus(TAP, RULES, NOW)
    assert accepted.accepted and accepted.fare is not None and accepted.fare.amount == 200


def test_holder_decisions() -> None:
    rules = HolderRules(accepted_regions=("51", "50"))
    tap = HolderTap(region="500101", hotlisted=False, issued=dt.date(2025, 1, 1), expiry=dt.date(2035, 1, 1))
    assert decide_holder(tap, rules, NOW).accepted
    assert decide_holder(replace(tap, hotlisted=True), rules, NOW).reason == Reason.HOTLISTED
    assert decide_holder(replace(tap, region="110000"), rules, NOW).reason == Reason.REGION_NOT_ACCEPTED
    assert decide_holder(replace(tap, expiry=dt.date(2026, 5, 19)), rules, NOW).reason == Reason.EXPIRED
    assert decide_holder(replace(tap, expiry=dt.date(2026, 5, 20)), rules, NOW).accepted
