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

from reader.daemon.fares import (
    AgeBand,
    Fare,
    FareCard,
    FareRide,
    FareRules,
    IssuerFacts,
    IssuerRules,
    age_on,
    band_for,
    check_issuer,
    fare_for_tap,
)

__all__ = ["AgeBand", "Fare", "age_on", "band_for"]  # re-exported: every kind's decisions use them


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
    ISSUER_NOT_ACCEPTED = "issuer_not_accepted"
    """Bus: a card of another city whose issuer the operator does not clear with."""
    NOT_INTEROPERABLE = "not_interoperable"
    """Bus: a card of another city that is not a T-Union interoperable card (0x17 says 0000)."""
    MEAL_CHARGED = "meal_charged"
    """Canteen: the meal's price after the holder's band discount is debited from the e-purse."""
    MEAL_PAY_AT_POS = "meal_pay_at_pos"
    """Canteen: the meal's price after the band discount goes back to the POS, which takes the payment."""
    MEAL_DISCOUNT_USED = "meal_discount_used"
    """Canteen: the card had its discounted meals of this meal period today; this one is at full price."""
    NO_MEAL_PRICE = "no_meal_price"
    """Canteen: the POS set no price for this tap (or it expired) and none is configured."""
    VENUE_ENTRY = "venue_entry"
    """Venue gate: entry at the price of the holder's band (recorded, not charged)."""
    VENUE_ENTRY_RESERVED = "venue_entry_reserved"
    """Venue gate: entry on a reservation for this time slot, at the price of the holder's band."""
    NOT_RESERVED = "not_reserved"
    """Venue gate: entry needs a reservation and the card has none for today."""
    RESERVATION_SLOT_MISSED = "reservation_slot_missed"
    """Venue gate: the card's reservation is for another time slot."""
    VENUE_FULL = "venue_full"
    """Venue gate: the day's capacity is reached."""
    ALREADY_ENTERED = "already_entered"
    """Venue gate: this card entered today already."""


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
    """A validator's rules for one line: regions, passback, issuers and the fare table."""

    accepted_regions: tuple[str, ...]
    passback: dt.timedelta
    fares: FareRules
    issuers: IssuerRules | None = None
    """The operator's home cities and issuer whitelist; None serves every T-Union card."""


@dataclass(frozen=True)
class BusTap:
    """What a bus validator read from the card (and its own passback table) for one tap."""

    region: str
    hotlisted: bool
    start: dt.date | None
    expiry: dt.date | None
    birth_date: dt.date | None
    rides: tuple[FareRide, ...]
    last_paid: dt.datetime | None
    last_refused: dt.datetime | None = None
    """When this terminal last found the card not genuine (its DEBIT refused MAC1)."""
    issuer: IssuerFacts | None = None
    """The 0x15 issuer id and the 0x17 interoperability flag; needed when `rules.issuers` is set."""
    card_type: int | None = None
    """File 0x17 byte 10, when it was read."""
    known_band: AgeBand | None = None
    """The holder's band kept from an earlier tap, when the birth date was not read again."""


def _denied(reason: Reason) -> Decision:
    return Decision(Outcome.DENIED, reason)


def decide_bus(tap: BusTap, rules: BusRules, now: dt.datetime) -> Decision:
    """Hotlist, a clone seen within the passback window, region, issuer, validity, passback, fare.

    Whether the purse can pay is the card's to say: INITIALIZE FOR PURCHASE refuses (9401) an
    amount beyond its balance and overdraft allowance, so the validator reads no balance first.
    """
    if tap.hotlisted:
        return _denied(Reason.HOTLISTED)
    if within_passback(tap.last_refused, now, rules.passback):
        return _denied(Reason.CARD_NOT_GENUINE)
    if not region_accepted(tap.region, rules.accepted_regions):
        return _denied(Reason.REGION_NOT_ACCEPTED)
    if rules.issuers is not None:
        if tap.issuer is None:
            return _denied(Reason.CARD_READ_FAILED)
        check = check_issuer(tap.issuer, rules.issuers)
        if check.reason is not None:
            return _denied(Reason(check.reason.value))
    invalid = validity_reason(now.date(), tap.start, tap.expiry)
    if invalid is not None:
        return _denied(invalid)
    if within_passback(tap.last_paid, now, rules.passback):
        return _denied(Reason.ALREADY_PAID)
    card = FareCard(tap.card_type, tap.birth_date, tap.rides, tap.known_band)
    fare = fare_for_tap(card, now, rules.fares.table, rules.fares.line_code)
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
