"""Tear a card away at a chosen command: the fault that purchase recovery exists for.

`TearingCard` is the fault injector (faults.py) restricted to its two tears: when the planned
command arrives, power is cut either before the card sees the command or after the card has
processed it (the answer is lost on the way back, the worst case for a terminal: the card may
have debited). The wrapper then raises `CardTorn`; every bridge treats that as the card leaving
the field (vpcd drops the connection, and the card comes back as a fresh insertion while it
stays inserted). Being a `FaultyChip`, it also takes any other `Fault` through `inject`.

    card = TearingCard(VirtualCard.from_profile("sichuan"))
    card.plan(ins=0x54, when="after")     # lose the answer of DEBIT FOR PURCHASE
"""

from __future__ import annotations

from typing import Literal

from reader.backends.base import CardSide
from sscard_sim.faults import Fault, FaultKind, FaultyChip

When = Literal["before", "after"]

_KINDS: dict[When, FaultKind] = {"before": FaultKind.TEAR_BEFORE, "after": FaultKind.TEAR_AFTER}


class TearingCard(FaultyChip):
    """A `CardSide` that loses power at a planned command, once."""

    def __init__(self, card: CardSide, kill_pid: int | None = None) -> None:
        super().__init__(card, kill_pid)

    def plan(self, ins: int, when: When, occurrence: int = 1) -> None:
        """Arm one tear at the `occurrence`-th command `ins`; it fires at most once."""
        self.inject(Fault(_KINDS[when], ins=ins, occurrence=occurrence))

    @property
    def torn(self) -> bool:
        """Whether the last planned fault struck as a tear."""
        struck = self.struck
        return struck is not None and struck.fault.kind in (FaultKind.TEAR_BEFORE, FaultKind.TEAR_AFTER)
