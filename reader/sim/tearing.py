"""Tear a card away at a chosen command: the fault that purchase recovery exists for.

`TearingCard` wraps any `CardSide` and, when the planned command arrives, cuts its power
either before the card sees the command or after the card has processed it (the answer is
lost on the way back, the worst case for a terminal: the card may have debited). The wrapper
then raises `CardTorn`; every bridge treats that as the card leaving the field (vpcd drops
the connection, and the card comes back as a fresh insertion while it stays inserted).

    card = TearingCard(VirtualCard.from_profile("sichuan"))
    card.plan(ins=0x54, when="after")     # lose the answer of DEBIT FOR PURCHASE
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reader.sim.card_side import CardSide
from reader.sim.cos import CardTorn

When = Literal["before", "after"]


@dataclass(frozen=True)
class TearPlan:
    """Tear at the `occurrence`-th command with instruction byte `ins` (counted from `plan()`)."""

    ins: int
    when: When
    occurrence: int = 1


class TearingCard:
    """A `CardSide` that loses power at a planned command, once."""

    def __init__(self, card: CardSide) -> None:
        self.card = card
        self._plan: TearPlan | None = None
        self._seen = 0
        self.torn = False

    def plan(self, ins: int, when: When, occurrence: int = 1) -> None:
        """Arm one tear; it fires at most once."""
        self._plan = TearPlan(ins, when, occurrence)
        self._seen = 0
        self.torn = False

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def atr(self) -> bytes:
        return self.card.atr()

    def transmit(self, apdu: bytes) -> bytes:
        plan = self._plan
        if plan is None or len(apdu) < 2 or apdu[1] != plan.ins:
            return self.card.transmit(apdu)
        self._seen += 1
        if self._seen != plan.occurrence:
            return self.card.transmit(apdu)
        self._plan = None
        self.torn = True
        if plan.when == "after":
            self.card.transmit(apdu)
        self.card.power_off()
        raise CardTorn(f"power lost {plan.when} INS {plan.ins:02X}")
