"""Boundaries of the offline rules that a one-character change would move, without readers.

The bench test (test_money_mutants.py) shows the same rule through a real card; here each
edge is pinned on its own: a ride dated after the tap (a card written by a terminal whose
clock runs ahead) earns nothing, a ride at the very instant of the tap does, and the
discount is taken off the fare only when the rule says transfer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from reader.daemon.fare_settings import bus_fare_rules
from reader.daemon.fares import CardType, FareRide, IssuerFacts, IssuerRules
from reader.daemon.policy import (
    AgeBand,
    BusRules,
    BusTap,
    HolderRules,
    HolderTap,
    Outcome,
    Reason,
    decide_bus,
    decide_holder,
)

NOW = dt.datetime(2026, 5, 20, 9, 0)
WINDOW = dt.timedelta(minutes=90)


def rules(discount: int = 100, bands: tuple[AgeBand, ...] = (), fare: int = 200) -> BusRules:
    fares = bus_fare_rules(
        line="812", fare=fare, age_bands=bands, transfer_discount=discount, transfer_window_minutes=90
    )
    return BusRules(accepted_regions=("51",), passback=dt.timedelta(seconds=60), fares=fares)


RULES = rules()
TAP = BusTap(
    region="510100",
    hotlisted=False,
    start=dt.date(2024, 1, 1),
    expiry=dt.date(2034, 1, 1),
    birth_date=None,
    rides=(),
    last_paid=None,
)


def ride(offset: dt.timedelta, line: str = "0815", amount: int = 200, industry: int = 0x02) -> FareRide:
    """A paid ride `offset` before NOW (negative: after it), on `line` as its 0x1E record codes it."""
    return FareRide(NOW - offset, bytes.fromhex(line), line.lstrip("0"), amount, "5810", industry)


@pytest.mark.parametrize(
    ("offset", "transfer"),
    [
        pytest.param(-dt.timedelta(microseconds=1), False, id="a-microsecond-ahead"),
        pytest.param(-dt.timedelta(minutes=10), False, id="ten-minutes-ahead"),
        pytest.param(-(WINDOW - dt.timedelta(minutes=1)), False, id="ahead-by-less-than-the-window"),
        pytest.param(dt.timedelta(0), True, id="the-same-instant"),
        pytest.param(WINDOW - dt.timedelta(microseconds=1), True, id="just-inside-the-window"),
        pytest.param(WINDOW, False, id="the-window-itself"),
    ],
)
def test_a_transfer_needs_a_ride_before_the_tap_and_within_the_window(offset: dt.timedelta, transfer: bool) -> None:
    fare = decide_bus(dataclasses.replace(TAP, rides=(ride(offset),)), RULES, NOW).fare
    assert fare is not None and fare.transfer is transfer and fare.amount == (100 if transfer else 200)


def test_a_future_dated_ride_is_charged_the_full_fare() -> None:
    tap = BusTap(
        region="510100",
        hotlisted=False,
        start=None,
        expiry=None,
        birth_date=None,
        rides=(ride(-dt.timedelta(minutes=5)),),
        last_paid=None,
    )
    fare = decide_bus(tap, RULES, NOW).fare
    assert fare is not None and (fare.amount, fare.base, fare.transfer) == (200, 200, False)


# -- every refusal of decide_bus / decide_holder keeps its outcome, reason and fare ----------


def test_a_card_refused_as_not_genuine_stays_refused_for_the_passback_window() -> None:
    refused = dataclasses.replace(TAP, last_refused=NOW - dt.timedelta(seconds=59))
    decision = decide_bus(refused, RULES, NOW)
    assert (decision.outcome, decision.reason) == (Outcome.DENIED, Reason.CARD_NOT_GENUINE)
    later = decide_bus(dataclasses.replace(TAP, last_refused=NOW - dt.timedelta(seconds=60)), RULES, NOW)
    assert (later.outcome, later.reason) == (Outcome.ACCEPTED, Reason.OK)


def test_a_bus_card_before_its_start_date_is_not_yet_valid() -> None:
    decision = decide_bus(dataclasses.replace(TAP, start=NOW.date() + dt.timedelta(days=1)), RULES, NOW)
    assert (decision.outcome, decision.reason) == (Outcome.DENIED, Reason.NOT_YET_VALID)


@pytest.mark.parametrize(
    ("discount", "line", "amount", "industry", "fare", "transfer"),
    [
        pytest.param(0, "0815", 200, 0x02, 200, False, id="no-discount-configured-no-transfer"),
        pytest.param(1, "0815", 200, 0x02, 199, True, id="a-one-fen-discount"),
        pytest.param(100, "0812", 200, 0x02, 200, False, id="the-same-line-is-no-transfer"),
        pytest.param(100, "0815", 1, 0x02, 100, True, id="a-one-fen-ride-counts"),
        pytest.param(100, "0815", 0, 0x02, 200, False, id="a-free-ride-does-not"),
        pytest.param(100, "0815", 200, 0x01, 200, False, id="a-metro-ride-does-not"),
    ],
)
def test_the_transfer_discount_applies_exactly_when_the_rule_says(
    discount: int, line: str, amount: int, industry: int, fare: int, transfer: bool
) -> None:
    earlier = ride(dt.timedelta(minutes=5), line=line, amount=amount, industry=industry)
    decided = decide_bus(dataclasses.replace(TAP, rides=(earlier,)), rules(discount), NOW).fare
    assert decided is not None and (decided.amount, decided.transfer) == (fare, transfer)


def test_a_band_percentage_rounds_down_to_whole_fen() -> None:
    senior = dataclasses.replace(TAP, birth_date=dt.date(1960, 1, 1))
    fare = decide_bus(senior, rules(0, (AgeBand("senior", 65, 75),), fare=250), NOW).fare
    assert fare is not None and fare.amount == 187 and isinstance(fare.amount, int)


def test_holder_validity_counts_from_the_issue_date() -> None:
    rules = HolderRules(("51",))
    tap = HolderTap(region="510100", hotlisted=False, issued=NOW.date() + dt.timedelta(days=1), expiry=None)
    decision = decide_holder(tap, rules, NOW)
    assert (decision.outcome, decision.reason) == (Outcome.DENIED, Reason.NOT_YET_VALID)
    served = decide_holder(dataclasses.replace(tap, issued=NOW.date()), rules, NOW)
    assert (served.outcome, served.reason) == (Outcome.ACCEPTED, Reason.OK)


# -- the operator's issuer rules and the fare table's card inputs, decided without readers --


ISSUERS = IssuerRules(home_cities=frozenset({"5101"}), cities=frozenset({"5000"}))
CHENGDU, CHONGQING, GUANGZHOU = (bytes.fromhex(h) for h in ("02005101FFFFFFFF", "02005000FFFFFFFF", "02004401FFFFFFFF"))


@pytest.mark.parametrize(
    ("issuer", "reason"),
    [
        pytest.param(IssuerFacts(CHENGDU, False), Reason.OK, id="home-city-whatever-its-flag"),
        pytest.param(IssuerFacts(CHONGQING, True), Reason.OK, id="listed-city-interoperable"),
        pytest.param(IssuerFacts(CHONGQING, False), Reason.NOT_INTEROPERABLE, id="listed-city-local-card"),
        pytest.param(IssuerFacts(GUANGZHOU, True), Reason.ISSUER_NOT_ACCEPTED, id="city-not-listed"),
        pytest.param(None, Reason.CARD_READ_FAILED, id="issuer-files-not-read"),
    ],
)
def test_the_issuer_rules_come_after_the_region_and_before_validity(issuer: IssuerFacts | None, reason: Reason) -> None:
    rules = dataclasses.replace(RULES, issuers=ISSUERS)
    decision = decide_bus(dataclasses.replace(TAP, issuer=issuer), rules, NOW)
    assert decision.reason is reason
    assert (decision.outcome is Outcome.ACCEPTED) == (reason is Reason.OK)
    expired = dataclasses.replace(TAP, issuer=issuer, expiry=NOW.date() - dt.timedelta(days=1))
    if reason is not Reason.OK:
        assert decide_bus(expired, rules, NOW).reason is reason, "the issuer is checked before validity"


def test_without_issuer_rules_every_issuer_is_served() -> None:
    assert decide_bus(dataclasses.replace(TAP, issuer=None), RULES, NOW).accepted


def test_the_card_type_and_a_kept_band_reach_the_fare() -> None:
    student = CardType("student", 0x02, 50)
    table = dataclasses.replace(RULES.fares.table, card_types=(student,), age_bands=(AgeBand("senior", 65, 25),))
    rules = dataclasses.replace(RULES, fares=dataclasses.replace(RULES.fares, table=table))
    by_type = decide_bus(dataclasses.replace(TAP, card_type=0x02), rules, NOW).fare
    assert by_type is not None and by_type.amount == 100
    kept = decide_bus(dataclasses.replace(TAP, known_band=AgeBand("senior", 65, 25)), rules, NOW).fare
    assert kept is not None and (kept.amount, kept.band) == (50, "senior")
    adult = dataclasses.replace(TAP, birth_date=dt.date(1990, 1, 1), known_band=table.age_bands[0])
    read = decide_bus(adult, rules, NOW)
    assert read.fare is not None and read.fare.amount == 200, "a birth date read now beats a band kept from before"
