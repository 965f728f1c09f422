"""Fan-out of tap events to local listeners, and the hand-over of one card to one POS request.

The tap path never waits for a listener: each subscriber has a bounded queue, and one that
falls behind is cut off (it reconnects and resumes from the queue's own history upstream).
Observers (the tap statistics behind the status page and the metrics) are called in the
publishing thread, so they see every record in order; they must be cheap and must not raise.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

Observer = Callable[[Mapping[str, Any]], None]


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
        self._observers: tuple[Observer, ...] = ()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self._depth)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.closed.set()
        with self._lock:
            self._subscriptions.discard(subscription)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def observe(self, observer: Observer) -> None:
        """Call `observer(record)` for every record published from now on, in the publisher's thread."""
        with self._lock:
            self._observers = (*self._observers, observer)

    def publish(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
            observers = self._observers
        for observer in observers:
            observer(event)
        for subscription in subscriptions:
            try:
                subscription.events.put_nowait(event)
            except queue.Full:
                self.unsubscribe(subscription)


class TooManyCardRequests(Exception):
    """More POS requests wait for a card than the terminal serves at once."""


class _Ticket:
    """One waiting request: the answer meant for it alone."""

    __slots__ = ("answer", "served")

    def __init__(self) -> None:
        self.answer: Mapping[str, Any] | None = None
        self.served = threading.Event()


class CardRequests:
    """POS software asks for the next card; the pharmacy pipeline answers with the holder.

    Each card goes to exactly one request, the one that has waited longest: two requests
    waiting at once (a POS retrying, two programs on one terminal) get two different cards,
    and neither sees the other's holder. A request whose client went away is withdrawn, so a
    card is not handed to a closed connection while a live request waits. A tap with no
    request waiting is served to nobody: the identity is dropped at once and never stored.
    """

    def __init__(self, limit: int = 4, poll: float = 0.2) -> None:
        self.limit = limit
        self._poll = poll
        self._lock = threading.Lock()
        self._tickets: collections.deque[_Ticket] = collections.deque()

    @property
    def waiting(self) -> bool:
        with self._lock:
            return bool(self._tickets)

    @property
    def waiting_count(self) -> int:
        with self._lock:
            return len(self._tickets)

    def wait_for_card(
        self, timeout: float, abandoned: Callable[[], bool] | None = None
    ) -> Mapping[str, Any] | None:
        """Block until the next card is read (its answer), `timeout` passes or `abandoned()` (None).

        `abandoned` is asked every `poll` seconds (the client hung up, the API is stopping).
        Raises TooManyCardRequests when `limit` requests already wait.
        """
        ticket = _Ticket()
        with self._lock:
            if len(self._tickets) >= self.limit:
                raise TooManyCardRequests(f"{len(self._tickets)} requests already wait for a card")
            self._tickets.append(ticket)
        deadline = time.monotonic() + timeout
        try:
            while not ticket.served.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or (abandoned is not None and abandoned()):
                    break
                ticket.served.wait(min(left, self._poll))
        finally:
            with self._lock:
                if ticket in self._tickets:
                    self._tickets.remove(ticket)
        return ticket.answer

    def offer(self, answer: Mapping[str, Any]) -> bool:
        """Hand a card's answer to the longest-waiting request; False when nobody was waiting."""
        with self._lock:
            if not self._tickets:
                return False
            ticket = self._tickets.popleft()
            ticket.answer = answer
            ticket.served.set()
            return True
