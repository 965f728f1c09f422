"""The one driver loop for every backend: waiting, card present, processing, waiting for removal.

Backends only know how to block (wait for a card, exchange, wait for it to leave); the
states, the logging, the recovery and the liveness live here once, as in Keyple's
observable-reader state machine. Each loop runs in its own thread with the reader name and
a tap id bound into structlog's context, so every log line of a tap, including the
processing callback's, can be followed.

Faults are part of the cycle, not exits from it:
- CardRemoved or TransmitTimeout during processing: logged, then the loop waits for the
  card to leave (a hung card is waited out in slices; liveness keeps beating).
- ReaderUnavailable (pcscd restarted, reader unplugged): logged once, then retried with a
  capped exponential backoff until the reader answers again; `reader_recovered` says how
  long it was away.
- A bug in the processing callback: logged with its traceback; the reader keeps serving.
Only cancellation (`stop()`) ends the loop.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from reader.backends.atr import classify_atr
from reader.backends.base import (
    CancelEvent,
    CardChannel,
    CardRemoved,
    Reader,
    ReaderError,
    ReaderUnavailable,
    TransmitTimeout,
    WaitCancelled,
)
from reader.backends.watchdog import abandoned_workers
from reader.backoff import Backoff
from reader.log import get_logger

Process = Callable[[CardChannel, str], None]
"""The processing callback: the card's channel, and the id of its tap (also bound in the logs)."""


class LoopState(enum.Enum):
    STARTING = "starting"
    WAITING = "waiting"
    PROCESSING = "processing"
    WAITING_REMOVAL = "waiting_removal"
    RECOVERING = "recovering"
    STOPPED = "stopped"


READER_BACKOFF_INITIAL = 0.05
READER_BACKOFF_CAP = 0.5
"""Low on purpose: a terminal whose pcscd comes back must read the next card within about two
seconds, and a failed attempt costs one refused socket connection."""


@dataclass(frozen=True)
class LoopStatus:
    """A snapshot for health reports and the service watchdog."""

    reader: str
    state: LoopState
    alive: bool
    heartbeat_age: float
    taps: int
    failures: int
    unavailable_since: float | None
    abandoned_exchanges: int


class ReaderLoop:
    """Drive one reader in a thread of its own, calling `process(channel, tap_id)` for each card.

    `new_tap_id` names each card's session in the logs (the daemon passes the generator of
    its tap record ids, so a tap has one id from detection to record).
    `wait_slice` bounds every blocking call so that the loop beats (liveness) at least that
    often; `stall_after` is how long without a beat makes `alive()` false (processing a card
    counts as one long step, so keep it well above the slowest transaction).
    """

    def __init__(
        self,
        reader: Reader,
        process: Process,
        *,
        wait_slice: float = 1.0,
        backoff: Backoff | None = None,
        stall_after: float = 30.0,
        new_tap_id: Callable[[], str] | None = None,
    ) -> None:
        self.reader = reader
        self._new_tap_id = new_tap_id or (lambda: uuid.uuid4().hex[:12])
        self._process = process
        self.wait_slice = wait_slice
        self.backoff = backoff or Backoff(READER_BACKOFF_INITIAL, READER_BACKOFF_CAP, jitter=False)
        self.stall_after = stall_after
        self._cancel = CancelEvent()
        self._thread: threading.Thread | None = None
        self._state = LoopState.STARTING
        self._beat_at = time.monotonic()
        self._unavailable_since: float | None = None
        self.taps = 0
        self.failures = 0
        self._log = get_logger(component="reader-loop", reader=reader.name)

    # ----------------------------------------------------------------- control

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"loop for {self.reader.name} already started")
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.reader.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Cancel the loop (a blocked wait is woken) and join it; True when it has ended."""
        self._cancel.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def state(self) -> LoopState:
        return self._state

    def alive(self) -> bool:
        """Whether the worker thread runs and has beaten recently (the service watchdog asks)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        return time.monotonic() - self._beat_at < self.stall_after

    def status(self) -> LoopStatus:
        return LoopStatus(
            reader=self.reader.name,
            state=self._state,
            alive=self.alive(),
            heartbeat_age=time.monotonic() - self._beat_at,
            taps=self.taps,
            failures=self.failures,
            unavailable_since=self._unavailable_since,
            abandoned_exchanges=abandoned_workers(),
        )

    # ----------------------------------------------------------------- the cycle

    def _beat(self) -> None:
        self._beat_at = time.monotonic()

    def _enter(self, state: LoopState) -> None:
        self._state = state
        self._beat()

    def _run(self) -> None:
        structlog.contextvars.bind_contextvars(reader=self.reader.name)
        self._log.info("reader_loop_started", kind=self.reader.kind.value)
        try:
            while not self._cancel.is_set():
                try:
                    self._cycle()
                except ReaderUnavailable as error:
                    self._unavailable(error)
                except WaitCancelled:
                    raise
                except Exception as error:  # noqa: BLE001 - a backend bug is retried like an outage, with its traceback
                    self._log.exception("reader_loop_error", error_type=type(error).__name__)
                    self._unavailable(ReaderUnavailable(self.reader.name, repr(error)))
        except WaitCancelled:
            pass
        finally:
            self._state = LoopState.STOPPED
            self._log.info("reader_loop_stopped", taps=self.taps, failures=self.failures)
            structlog.contextvars.clear_contextvars()

    def _cycle(self) -> None:
        self._enter(LoopState.WAITING)
        try:
            channel = self.reader.wait_for_card(self.wait_slice, self._cancel)
        except (ReaderUnavailable, WaitCancelled):
            raise
        except ReaderError as error:
            # The card is there but could not be opened (mute, held by another application, stuck).
            self._recovered()
            self.failures += 1
            self._log.error("card_connect_failed", error=str(error), error_type=type(error).__name__)
            self._await_removal()
            return
        self._recovered()
        if channel is None:
            return
        tap_id = self._new_tap_id()
        with structlog.contextvars.bound_contextvars(tap_id=tap_id):
            self.taps += 1
            self._log.info("card_present", card=classify_atr(channel.atr).describe())
            self._run_process(channel, tap_id)
            self._await_removal()

    def _run_process(self, channel: CardChannel, tap_id: str) -> None:
        self._enter(LoopState.PROCESSING)
        started = time.monotonic()
        try:
            self._process(channel, tap_id)
        except CardRemoved as error:
            self.failures += 1
            self._log.warning("card_removed_during_processing", error=str(error))
        except TransmitTimeout as error:
            self.failures += 1
            self._log.error("card_transmit_timeout", error=str(error))
        except (ReaderUnavailable, WaitCancelled):
            self.failures += 1
            raise
        except ReaderError as error:
            self.failures += 1
            self._log.error("card_processing_failed", error=str(error), error_type=type(error).__name__)
        except Exception:  # noqa: BLE001 - a bug in card code must not stop the reader; traceback logged
            self.failures += 1
            self._log.exception("card_processing_crashed")
        else:
            self._log.info("card_processed", duration_ms=round((time.monotonic() - started) * 1000, 2))
        finally:
            channel.close()

    def _await_removal(self) -> None:
        self._enter(LoopState.WAITING_REMOVAL)
        started = time.monotonic()
        while not self.reader.wait_for_removal(self.wait_slice, self._cancel):
            self._beat()
        self._log.info("card_removed", present_ms=round((time.monotonic() - started) * 1000, 1))

    # ----------------------------------------------------------------- recovery

    def _unavailable(self, error: ReaderUnavailable) -> None:
        self._enter(LoopState.RECOVERING)
        delay = self.backoff.next_delay()
        if self._unavailable_since is None:
            self._unavailable_since = time.monotonic()
            self._log.warning("reader_unavailable", error=str(error), retry_in_ms=round(delay * 1000))
        else:
            self._log.debug("reader_still_unavailable", error=str(error), retry_in_ms=round(delay * 1000))
        if self._cancel.wait(delay):
            raise WaitCancelled(self.reader.name, "stopped while recovering")

    def _recovered(self) -> None:
        if self._unavailable_since is None:
            return
        down = time.monotonic() - self._unavailable_since
        self._unavailable_since = None
        self.backoff.reset()
        self._log.info("reader_recovered", down_ms=round(down * 1000))


def all_alive(loops: list[ReaderLoop]) -> bool:
    """The service watchdog's question: is every reader worker alive?"""
    return all(loop.alive() for loop in loops)
