"""A venue gate's entry decision (museum, scenic spot, library entry): pure, no reader, no clock.

The card is the ticket: valid, not hotlisted, from an accepted region; where the venue
takes reservations, one for this card whose time slot is now; within the day's capacity;
once a day. The entry price of the holder's age band (free or reduced for the elderly) is
recorded for the venue's statistics and its subsidy claims, never charged here.

Conventions, as in `reader.daemon.policy`: dates inclusive; an age band from the birthday
itself; a time slot admits from `early` before its start until before its end, in the
terminal's local time; "today" is the terminal's local calendar day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from reader.daemon.fares import Fare, age_on
from reader.daemon.policy import Decision, Outcome, Reason, region_accepted, validity_reason


@dataclass(frozen=True)
class PriceBand:
    """From `min_age` on, entry costs `price` fen (0 = free)."""

    name: str
    min_age: int
    price: int


@dataclass(frozen=True)
class Slot:
    """One reservation's time slot, local time without offset."""

    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True)
class VenueRules:
    """A venue's entry rules."""

    accepted_regions: tuple[str, ...]
    price: int = 0
    """The entry price of a holder in no band."""
    bands: tuple[PriceBand, ...] = ()
    reservations_required: bool = False
    early: dt.timedelta = dt.timedelta(0)
    capacity: int | None = None
    once_a_day: bool = True


@dataclass(frozen=True)
class VenueTap:
    """What the gate read, and what the terminal knows of today's entries."""

    region: str
    hotlisted: bool
    issued: dt.date | None
    expiry: dt.date | None
    birth_date: dt.date | None
    entered_today: bool = False
    entries_today: int = 0
    """Entries through this terminal today, every card."""
    slots: tuple[Slot, ...] = ()
    """This card's reservations (any day)."""


def price_band_for(age: int | None, bands: Sequence[PriceBand]) -> PriceBand | None:
    """The band with the highest threshold the holder has reached, if any."""
    if age is None:
        return None
    reached = [band for band in bands if age >= band.min_age]
    return max(reached, key=lambda band: band.min_age) if reached else None


def entry_fare(price: int, band: PriceBand | None) -> Fare:
    """The entry price of the band (or the full price), with the full price beside it."""
    return Fare(amount=band.price if band else price, base=price, transfer=False, band=band.name if band else None)


def reservation_reason(slots: Sequence[Slot], now: dt.datetime, early: dt.timedelta) -> Reason:
    """VENUE_ENTRY_RESERVED when a slot admits now; RESERVATION_SLOT_MISSED when the card's
    reservations today are all for other times; NOT_RESERVED when it has none today."""
    today = [slot for slot in slots if slot.start.date() == now.date()]
    if any(slot.start - early <= now < slot.end for slot in today):
        return Reason.VENUE_ENTRY_RESERVED
    return Reason.RESERVATION_SLOT_MISSED if today else Reason.NOT_RESERVED


def decide_entry(tap: VenueTap, rules: VenueRules, now: dt.datetime) -> Decision:
    """Hotlist, region, validity, once a day, reservation, capacity, then the band's price.

    `now` is the local time of the tap without its offset. A second tap of a card that
    entered today is told so before "full", so a visitor coming back is not told the venue
    is full.
    """
    if tap.hotlisted:
        return _denied(Reason.HOTLISTED)
    if not region_accepted(tap.region, rules.accepted_regions):
        return _denied(Reason.REGION_NOT_ACCEPTED)
    invalid = validity_reason(now.date(), tap.issued, tap.expiry)
    if invalid is not None:
        return _denied(invalid)
    if rules.once_a_day and tap.entered_today:
        return _denied(Reason.ALREADY_ENTERED)
    reason = Reason.VENUE_ENTRY
    if rules.reservations_required:
        reason = reservation_reason(tap.slots, now, rules.early)
        if reason is not Reason.VENUE_ENTRY_RESERVED:
            return _denied(reason)
    if rules.capacity is not None and tap.entries_today >= rules.capacity:
        return _denied(Reason.VENUE_FULL)
    age = age_on(tap.birth_date, now.date()) if tap.birth_date else None
    return Decision(Outcome.ACCEPTED, reason, entry_fare(rules.price, price_band_for(age, rules.bands)))


def _denied(reason: Reason) -> Decision:
    return Decision(Outcome.DENIED, reason)
