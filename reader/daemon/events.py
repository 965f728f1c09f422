"""Fan-out of tap events to local listeners (gate controllers, POS software).

The tap path never waits for a listener: each subscriber has a bounded queue, and one that
falls behind is cut off (it reconnects and resumes from the queue's own history upstream).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Any


class Subscription:
    """One listener's pending events; `closed` once it fell behind or unsubscribed."""

    def __init__(self, depth: int) -> None:
        self.events: queue.Queue[Mapping[str, Any]] = queue.Queue(depth)
        self.closed = threading.Event()

    def get(self, timeout: float) -> Mapping[str, Any] | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None


class EventHub:
    """Publish once, deliver to every live subscription without blocking."""

    def __init__(self, depth: int = 256) -> None:
        self._depth = depth
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self._depth)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.closed.set()
        with self._lock:
            self._subscriptions.discard(subscription)

    def publish(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            try:
                subscription.events.put_nowait(event)
            except queue.Full:
                self.unsubscribe(subscription)


class CardRequests:
    """POS software asks for the next card; the pharmacy pipeline answers with the holder.

    A tap with no request waiting is served to nobody: the identity is dropped at once
    and never stored.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting = 0
        self._answer: Mapping[str, Any] | None = None
        self._generation = 0

    @property
    def waiting(self) -> bool:
        with self._cond:
            return self._waiting > 0

    def wait_for_card(self, timeout: float) -> Mapping[str, Any] | None:
        """Block until the next card is read (its answer) or `timeout` passes (None)."""
        with self._cond:
            self._waiting += 1
            generation = self._generation
            try:
                self._cond.wait_for(lambda: self._generation != generation, timeout)
                return self._answer if self._generation != generation else None
            finally:
                self._waiting -= 1
                if self._waiting == 0:
                    self._answer = None

    def offer(self, answer: Mapping[str, Any]) -> bool:
        """Hand a card's answer to every waiting request; False when nobody was waiting."""
        with self._cond:
            if self._waiting == 0:
                return False
            self._answer = answer
            self._generation += 1
            self._cond.notify_all()
            return True
