"""A community canteen's meal decision: pure, from what was read to the price the holder pays.

The one-card regulations ask that an elderly holder's discount be "recognised without
asking": the terminal reads the SSSE birth date and prices the meal by age band. The
discount is public money, so it is capped: a card has `discounted_meals` discounted meals
per meal period per day; a meal beyond the cap, or outside every meal period, is at the
full price and still served (a diner buying a second meal for someone else pays for it).

Conventions, as in `reader.daemon.policy`: money in fen, rounded down; an age band applies
from the birthday itself; a meal period runs from its start until before its end (an 11:00
to 13:30 lunch takes a tap at 11:00 and not one at 13:30), in the terminal's local time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from reader.daemon.fares import AgeBand, Fare, age_on, band_for
from reader.daemon.policy import (
    Decision,
    Outcome,
    Reason,
    has_funds,
    region_accepted,
    validity_reason,
    within_passback,
)

Payment = Literal["purse", "pos"]


@dataclass(frozen=True)
class MealPeriod:
    """Breakfast, lunch, dinner...: from `start` until before `end`, local time, within one day."""

    name: str
    start: dt.time
    end: dt.time


@dataclass(frozen=True)
class CanteenRules:
    """A canteen's rules (amounts in fen)."""

    accepted_regions: tuple[str, ...]
    payment: Payment
    bands: tuple[AgeBand, ...] = ()
    meals: tuple[MealPeriod, ...] = ()
    discounted_meals: int = 1
    repeat: dt.timedelta = dt.timedelta(0)
    """A second tap of the same card at the fixed price within this is a double tap, refused."""


@dataclass(frozen=True)
class MealTap:
    """What the canteen reader read, and what the terminal knows of the card today."""

    region: str
    hotlisted: bool
    issued: dt.date | None
    expiry: dt.date | None
    birth_date: dt.date | None
    price: int | None
    """The meal's full price: the POS's for this tap, else the configured one, else None."""
    price_fixed: bool
    """The price is the configured one, not one the POS set for this tap."""
    discounted_today: int = 0
    """Discounted meals of this card in the meal period of the tap, today."""
    last_meal: dt.datetime | None = None
    """The card's last meal here (local time), for the double-tap guard."""
    purse_start: dt.date | None = None
    purse_expiry: dt.date | None = None
    balance: int = 0
    overdraft_limit: int = 0


def parse_clock(text: str) -> dt.time:
    """"HH:MM" as a time of day (the configuration's format)."""
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


def meal_period_at(meals: Sequence[MealPeriod], when: dt.time) -> MealPeriod | None:
    """The meal period that `when` falls in, if any (start included, end excluded)."""
    for meal in meals:
        if meal.start <= when < meal.end:
            return meal
    return None


def meal_fare(price: int, band: AgeBand | None) -> Fare:
    """The meal's price after the band's percentage, rounded down (a 0 % band eats free)."""
    amount = price if band is None else price * band.percent // 100
    return Fare(amount=amount, base=price, transfer=False, band=band.name if band else None)


def decide_meal(tap: MealTap, rules: CanteenRules, now: dt.datetime) -> Decision:
    """Hotlist, region, validity, a price, the double tap, the band and its cap, funds.

    `now` is the local time of the tap without its offset.
    """
    if tap.hotlisted:
        return _denied(Reason.HOTLISTED)
    if not region_accepted(tap.region, rules.accepted_regions):
        return _denied(Reason.REGION_NOT_ACCEPTED)
    invalid = validity_reason(now.date(), tap.issued, tap.expiry)
    if invalid is None and rules.payment == "purse":
        invalid = validity_reason(now.date(), tap.purse_start, tap.purse_expiry)
    if invalid is not None:
        return _denied(invalid)
    if tap.price is None:
        return _denied(Reason.NO_MEAL_PRICE)
    if tap.price_fixed and within_passback(tap.last_meal, now, rules.repeat):
        return _denied(Reason.ALREADY_PAID)
    age = age_on(tap.birth_date, now.date()) if tap.birth_date else None
    band = band_for(age, rules.bands)
    period = meal_period_at(rules.meals, now.time())
    capped = band is not None and period is not None and tap.discounted_today >= rules.discounted_meals
    if period is None or capped:
        band = None
    fare = meal_fare(tap.price, band)
    if rules.payment == "purse" and not has_funds(tap.balance, tap.overdraft_limit, fare.amount):
        return Decision(Outcome.DENIED, Reason.INSUFFICIENT_BALANCE, fare)
    if capped:
        return Decision(Outcome.ACCEPTED, Reason.MEAL_DISCOUNT_USED, fare)
    reason = Reason.MEAL_CHARGED if rules.payment == "purse" else Reason.MEAL_PAY_AT_POS
    return Decision(Outcome.ACCEPTED, reason, fare)


def counts_as_discounted(reason: str, concession: object) -> bool:
    """Whether a committed meal record used one of the card's discounted meals."""
    return reason in (Reason.MEAL_CHARGED, Reason.MEAL_PAY_AT_POS) and concession is not None


def _denied(reason: Reason) -> Decision:
    return Decision(Outcome.DENIED, reason)
