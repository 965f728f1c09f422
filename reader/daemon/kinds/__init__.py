"""The terminal kinds, by the name `terminal.profile` gives them.

A kind reads what its rules need, decides with the pure policy, and acts; the shared tap
pipeline (`reader.daemon.pipeline`) does the rest. Adding a kind is one module here and one
line in `KINDS`; kinds never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from protocols.exchange import Transmit
from reader.daemon.kinds.bus import BusKind
from reader.daemon.kinds.canteen import CanteenKind
from reader.daemon.kinds.holder import LibraryKind, PharmacyKind
from reader.daemon.kinds.venue import VenueKind
from reader.daemon.outcome import TapContext, TapOutcome
from reader.daemon.recording import Recorder
from reader.daemon.services import Services


class Kind(Protocol):
    """One terminal kind's processing of a tap, from the card's first APDU to its verdict."""

    def process(self, card: Transmit, tap: TapContext) -> TapOutcome: ...


KINDS: dict[str, Callable[[Services, Recorder], Kind]] = {
    "bus": BusKind,
    "library": LibraryKind,
    "pharmacy": PharmacyKind,
    "canteen": CanteenKind,
    "venue": VenueKind,
}


def create_kind(profile: str, services: Services, recorder: Recorder) -> Kind:
    """The kind named by `profile`, built once per reader."""
    return KINDS[profile](services, recorder)
