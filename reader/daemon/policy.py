"""Offline authorisation: pure functions from what was read to a decision.

Nothing here touches a reader, a clock or a file: the pipeline passes in the facts read
from the card, the time of the tap and the terminal's settings, so every rule and its
boundaries are tested without readers.

Conventions an operator can rely on:
- dates are inclusive: a card is valid on its start date and on its expiry date;
- an age band applies from the birthday itself; a holder born on 29 February has the
  birthday on 1 March in common years;
- money is in fen (0.01 yuan), as the card counts it;
- the passback window is half-open: a tap exactly `window` seconds after the last paid
  ride is a new ride.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DENIED = "denied"
    UNCONFIRMED = "unconfirmed"
    """A torn debit whose card never came back: the back office settles it from clearing."""


class Reason(enum.StrEnum):
    """Reason codes in every tap record; the back office counts them."""

    OK = "ok"
    ALREADY_PAID = "already_paid"
    NO_TRANSPORT_APP = "no_transport_app"
    APP_LOCKED = "app_locked"
    APP_BLOCKED = "app_blocked"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    HOTLISTED = "hotlisted"
    REGION_NOT_ACCEPTED = "region_not_accepted"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    NOT_A_SOCIAL_SECURITY_CARD = "not_a_social_security_card"
    CARD_NOT_GENUINE = "card_not_genuine"
    CARD_READ_FAILED = "card_read_failed"
    CARD_REMOVED = "card_removed"
    PURCHASE_FAILED = "purchase_failed"
    MAC2_INVALID = "mac2_invalid"
    OUT_OF_SERVICE = "out_of_service"
    PSAM_UNAVAILABLE = "psam_unavailable"
    PSAM_CANNOT_AUTHENTICATE = "psam_cannot_authenticate"
    DEBIT_UNCONFIRMED = "debit_unconfirmed"


@dataclass(frozen=True)
class AgeBand:
    """From `min_age` on, the holder pays `percent` of the fare (0 = free)."""

    name: str
    min_age: int
    percent: int


@dataclass(frozen=True)
class Ride:
    """One earlier ride taken from the card's process log (file 0x1E)."""

    when: dt.datetime
    line: str
    amount: int


@dataclass(frozen=True)
class Fare:
    """The amount to debit and how it was reached."""

    amount: int
    base: int
    transfer: bool
    band: str | None


def age_on(birth: dt.date, day: dt.date) -> int:
    """Completed years on `day`; the birthday itself counts (29 February → 1 March)."""
    years = day.year - birth.year
    try:
        birthday = birth.replace(year=day.year)
    except ValueError:
        birthday = dt.date(day.year, 3, 1)
    return years if day >= birthday else years - 1


def validity_reason(day: dt.date, start: dt.date | None, expiry: dt.date | None) -> Reason | None:
    """NOT_YET_VALID before the start date, EXPIRED after the expiry date, else None."""
    if start is not None and day < start:
        return Reason.NOT_YET_VALID
    if expiry is not None and day > expiry:
        return Reason.EXPIRED
    return None


def region_accepted(region: str, prefixes: Sequence[str]) -> bool:
    """Whether the card's region code (GB/T 2260, e.g. 510100) starts with an accepted prefix."""
    return any(region.startswith(prefix) for prefix in prefixes)


def band_for(age: int | None, bands: Sequence[AgeBand]) -> AgeBand | None:
    """The band with the highest threshold the holder has reached, if any."""
    if age is None:
        return None
    reached = [band for band in bands if age >= band.min_age]
    return max(reached, key=lambda band: band.min_age) if reached else None


def is_transfer(
    rides: Sequence[Ride], now: dt.datetime, window: dt.timedelta, line: str
) -> bool:
    """A paid ride on another line within `window` before now earns the transfer discount."""
    return any(
        ride.line != line and ride.amount > 0 and dt.timedelta(0) <= now - ride.when < window
        for ride in rides
    )


def fare_for(base: int, transfer_discount: int, transfer: bool, band: AgeBand | None) -> Fare:
    """The fare after the transfer discount, then the age band's percentage (rounded down)."""
    amount = max(0, base - transfer_discount) if transfer else base
    if band is not None:
        amount = amount * band.percent // 100
    return Fare(amount=amount, base=base, transfer=transfer, band=band.name if band else None)


def within_passback(last_paid: dt.datetime | None, now: dt.datetime, window: dt.timedelta) -> bool:
    """True when the same card paid on this terminal less than `window` ago."""
    return last_paid is not None and dt.timedelta(0) <= now - last_paid < window


def has_funds(balance: int, overdraft_limit: int, amount: int) -> bool:
    """Whether the e-purse can pay `amount`, the overdraft allowance included."""
    return balance + overdraft_limit >= amount


@dataclass(frozen=True)
class Decision:
    """What the terminal does with a tap, before any money moves."""

    outcome: Outcome
    reason: Reason
    fare: Fare | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED


@dataclass(frozen=True)
class BusRules:
    """A validator's fare rules for one line (all amounts in fen)."""

    line: str
    fare: int
    accepted_regions: tuple[str, ...]
    passback: dt.timedelta
    transfer_discount: int = 0
    transfer_window: dt.timedelta = dt.timedelta(0)
    bands: tuple[AgeBand, ...] = ()


@dataclass(frozen=True)
class BusTap:
    """What a bus validator read from the card (and its own passback table) for one tap."""

    region: str
    hotlisted: bool
    start: dt.date | None
    expiry: dt.date | None
    balance: int
    overdraft_limit: int
    birth_date: dt.date | None
    rides: tuple[Ride, ...]
    last_paid: dt.datetime | None
    last_refused: dt.datetime | None = None
    """When this terminal last found the card not genuine (its DEBIT refused MAC1)."""


def _denied(reason: Reason) -> Decision:
    return Decision(Outcome.DENIED, reason)


def decide_bus(tap: BusTap, rules: BusRules, now: dt.datetime) -> Decision:
    """Hotlist, a clone seen within the passback window, region, validity, passback, fare, funds."""
    if tap.hotlisted:
        return _denied(Reason.HOTLISTED)
    if within_passback(tap.last_refused, now, rules.passback):
        return _denied(Reason.CARD_NOT_GENUINE)
    if not region_accepted(tap.region, rules.accepted_regions):
        return _denied(Reason.REGION_NOT_ACCEPTED)
    invalid = validity_reason(now.date(), tap.start, tap.expiry)
    if invalid is not None:
        return _denied(invalid)
    if within_passback(tap.last_paid, now, rules.passback):
        return _denied(Reason.ALREADY_PAID)
    age = age_on(tap.birth_date, now.date()) if tap.birth_date else None
    transfer = rules.transfer_discount > 0 and is_transfer(tap.rides, now, rules.transfer_window, rules.line)
    fare = fare_for(rules.fare, rules.transfer_discount, transfer, band_for(age, rules.bands))
    if not has_funds(tap.balance, tap.overdraft_limit, fare.amount):
        return Decision(Outcome.DENIED, Reason.INSUFFICIENT_BALANCE, fare)
    return Decision(Outcome.ACCEPTED, Reason.OK, fare)


@dataclass(frozen=True)
class HolderRules:
    """Library gates and pharmacy POS: which cards are served."""

    accepted_regions: tuple[str, ...]


@dataclass(frozen=True)
class HolderTap:
    """What a gate or POS read from the social security application."""

    region: str
    hotlisted: bool
    issued: dt.date | None
    expiry: dt.date | None


def decide_holder(tap: HolderTap, rules: HolderRules, now: dt.datetime) -> Decision:
    """A valid, not hotlisted card from an accepted region is served."""
    if tap.hotlisted:
        return _denied(Reason.HOTLISTED)
    if not region_accepted(tap.region, rules.accepted_regions):
        return _denied(Reason.REGION_NOT_ACCEPTED)
    invalid = validity_reason(now.date(), tap.issued, tap.expiry)
    if invalid is not None:
        return _denied(invalid)
    return Decision(Outcome.ACCEPTED, Reason.OK)
