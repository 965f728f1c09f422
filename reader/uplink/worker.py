"""What every background uplink thread shares: start, stop, an alive check, and statistics.

The service watchdog asks `is_alive()`; a thread that still exists but has stopped going
round its loop (stuck in a call that never returns) counts as dead, which is why each loop
iteration calls `_beat()` and long waits are cut into short slices.
"""

from __future__ import annotations

import abc
import collections
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from reader.log import get_logger

_RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class UplinkStats:
    """Figures for the daemon's status: deliveries, failures and what the worker is doing now."""

    name: str
    running: bool
    alive: bool
    connected: bool | None
    delivered: int
    delivery_rate_per_s: float
    batches: int
    failures: int
    set_aside: int
    in_flight: int
    last_delivery_at: float | None
    last_error: str | None
    last_error_at: float | None
    retry_at: float | None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return asdict(self)


class UplinkWorker(abc.ABC):
    """A daemon thread running `_run()` until `stop()`; subclasses implement `_run`."""

    def __init__(self, name: str, *, stall_after_s: float) -> None:
        self.name = name
        self._stall_after_s = stall_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._heartbeat = time.monotonic()
        self._delivered = 0
        self._batches = 0
        self._failures = 0
        self._set_aside = 0
        self._last_delivery_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._retry_at: float | None = None
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._log = get_logger(component=name)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._stop.clear()
        self._heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its current step and wait up to `timeout` for it."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        """True while the thread runs and has gone round its loop recently."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        return time.monotonic() - self._heartbeat < self._stall_after_s

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    def _main(self) -> None:
        self._log.info("uplink_started")
        try:
            self._run()
        except Exception as exc:
            self._log.exception("uplink_crashed", error=repr(exc))
            self._note_error(f"crashed: {exc!r}")
            raise
        finally:
            self._log.info("uplink_stopped")

    @abc.abstractmethod
    def _run(self) -> None:
        """The loop; returns when `stopping` becomes true."""

    def _wake(self) -> None:
        """Cut short a wait in `_run`; `_sleep` waits on the stop event, others override this."""
        self._stop.set()

    # -- helpers for subclasses ----------------------------------------------------------

    def _beat(self) -> None:
        self._heartbeat = time.monotonic()

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` in short slices, beating; False if stop() was called meanwhile."""
        deadline = time.monotonic() + seconds
        self._retry_at = time.time() + seconds
        try:
            while True:
                self._beat()
                left = deadline - time.monotonic()
                if left <= 0:
                    return not self.stopping
                if self._stop.wait(min(left, 0.5)):
                    return False
        finally:
            self._retry_at = None

    def _note_delivered(self, taps: int) -> None:
        now = time.time()
        with self._lock:
            self._delivered += taps
            self._batches += 1
            self._last_delivery_at = now
            self._recent.append((now, taps))

    def _note_error(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = error
            self._last_error_at = time.time()

    def _note_set_aside(self, taps: int) -> None:
        with self._lock:
            self._set_aside += taps

    def _connected(self) -> bool | None:
        """Whether a connection is up now; None for connectionless workers."""
        return None

    def _in_flight(self) -> int:
        return 0

    def stats(self) -> UplinkStats:
        """A snapshot of this worker's figures."""
        now = time.time()
        with self._lock:
            while self._recent and self._recent[0][0] < now - _RATE_WINDOW_S:
                self._recent.popleft()
            recent = sum(n for _, n in self._recent)
            return UplinkStats(
                name=self.name,
                running=self._thread is not None and self._thread.is_alive(),
                alive=self.is_alive(),
                connected=self._connected(),
                delivered=self._delivered,
                delivery_rate_per_s=recent / _RATE_WINDOW_S,
                batches=self._batches,
                failures=self._failures,
                set_aside=self._set_aside,
                in_flight=self._in_flight(),
                last_delivery_at=self._last_delivery_at,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                retry_at=self._retry_at,
            )
