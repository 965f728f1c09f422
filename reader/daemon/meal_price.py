"""The canteen POS's side of the local API: the price of the next meal, and the card it waits for.

The cashier rings up the meal; the POS sets its price for the next tap
(`PUT /v1/canteen/price`) and, when it takes the payment itself, waits for the card
(`POST /v1/read-card`) to learn the price after the holder's discount. A price is for one
meal: the tap that is served at it takes it, so a diner who taps twice does not eat twice on
one order. It expires after a short time (the POS's `expires_in`, at most the canteen's
`pos_price_seconds`), so an order abandoned at the till never prices the next diner's meal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reader.daemon.events import CardRequests

MAX_PRICE = 100_000
"""The dearest meal the POS may set, in fen (1000 yuan): a larger number is a typing slip."""


@dataclass(frozen=True)
class MealPrice:
    """A price set by the POS, and how many seconds it has left."""

    amount: int
    expires_in: float
    serial: int
    """Which setting this is: the tap takes the price it read, not one set since."""


class MealPrices:
    """The one price the POS set for the next tap; thread-safe (API threads and the tap loop)."""

    def __init__(self, longest: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.longest = longest
        """The longest a price may wait, in seconds (the canteen's `pos_price_seconds`)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._price: tuple[int, float, int] | None = None
        self._serial = 0

    def set(self, amount: int, expires_in: float | None = None) -> MealPrice:
        """Price the next tap at `amount` fen for `expires_in` seconds (at most `longest`)."""
        if not 0 < amount <= MAX_PRICE:
            raise ValueError(f"a meal price is 1 to {MAX_PRICE} fen, not {amount}")
        seconds = self.longest if expires_in is None else min(expires_in, self.longest)
        if not seconds > 0:
            raise ValueError("a price must be valid for some time")
        with self._lock:
            self._serial += 1
            self._price = (amount, self._clock() + seconds, self._serial)
            return MealPrice(amount, seconds, self._serial)

    def current(self) -> MealPrice | None:
        """The price in force, if one is set and not expired."""
        with self._lock:
            if self._price is None:
                return None
            amount, deadline, serial = self._price
            left = deadline - self._clock()
            if left <= 0:
                self._price = None
                return None
            return MealPrice(amount, left, serial)

    def take(self, price: MealPrice) -> bool:
        """Use up `price` for a served meal; False when it was withdrawn or replaced meanwhile."""
        with self._lock:
            if self._price is None or self._price[2] != price.serial:
                return False
            self._price = None
            return True

    def withdraw(self) -> bool:
        """Forget the price (the order was cancelled); False when none was set."""
        with self._lock:
            had = self._price is not None
            self._price = None
            return had


class CanteenRequests(CardRequests):
    """The card requests of a canteen terminal, with the price its POS set for the next meal."""

    def __init__(self, prices: MealPrices, limit: int = 4, poll: float = 0.2) -> None:
        super().__init__(limit, poll)
        self.prices = prices
