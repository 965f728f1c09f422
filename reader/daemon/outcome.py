"""What a terminal kind hands back to the shared tap pipeline, and what the pipeline hands it.

Every kind (bus, library, pharmacy, ...) ends a tap with a `TapOutcome`; the pipeline alone
turns it into a record, a journal settlement, an event and a signal. The values here are the
whole contract between the two, so a new kind never reaches into the pipeline.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reader.daemon.journal import CardMark
from reader.daemon.policy import Decision
from reader.daemon.record import Debit


@dataclass
class TapContext:
    """One tap as a kind processes it: its id, its time, and whether money may be moving."""

    tap_id: str
    now: dt.datetime
    """The terminal's local time of the tap, with its UTC offset."""
    in_flight: bool = False
    """Set once a debit is journalled (or a torn one is being settled): from then on no
    failure may deny the tap, since the card may have paid."""
    parameters_version: int | None = None
    """The version of the back office's parameters the tap was decided with, if any."""


@dataclass(frozen=True)
class CardRef:
    """The card as records name it: a keyed token of its number, and its issuing region."""

    token: str
    region: str


@dataclass(frozen=True)
class PurseOutcome:
    """What a tap did to, or found in, an e-purse; written in the record's commit."""

    balance: int | None = None
    """The purse's own money when no debit was made (a refusal, a free ride)."""
    debit: Debit | None = None
    settles: str | None = None
    """The application serial whose journalled debit this record settles."""
    mark: tuple[CardMark, dt.datetime] | None = None
    """What to remember of the card for the passback window (paid, or not genuine), and when."""
    original: tuple[str, dt.datetime] | None = None
    """A recovered torn debit is recorded under its own tap's id and time."""


@dataclass(frozen=True)
class TapOutcome:
    """A kind's verdict on one tap."""

    decision: Decision
    card: CardRef | None = None
    purse: PurseOutcome | None = None
    answer: Mapping[str, Any] | None = None
    """What the local API's waiting read-card request gets beside the result (pharmacy POS)."""
    torn: bool = False
    """A debit journalled and not recorded yet: the card may come back to settle it."""
