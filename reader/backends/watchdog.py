"""A worker thread that runs blocking card exchanges so that the caller can walk away at a deadline.

Neither pcsc-lite nor a card emulator can abort an exchange in flight: SCardCancel only
interrupts SCardGetStatusChange, and every other call on the same PC/SC context waits for
the client-side lock held by the stuck SCardTransmit. So the exchange runs on a thread of
its own and the caller waits on a future with a deadline. At the deadline the caller gets
`DeadlineExceeded` and the worker is *abandoned*: it stays blocked in the native call until
the driver gives up (card answers, card removed, vpcd connection closed, pcscd restarted),
then drops the late answer, runs its finaliser (disconnect, release its own context) and
exits. It is a daemon thread, so a call that never returns cannot keep the process alive.

Each worker owns whatever native state its calls create (a PC/SC context, a card handle),
which keeps pcsc-lite's rule of one context per thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from reader.log import get_logger

T = TypeVar("T")

_log = get_logger(component="exchange-worker")



class _LiveCount:
    """A count shared by every worker thread, changed under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self._value += delta

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


_ABANDONED_ALIVE = _LiveCount()
"""Abandoned workers whose stuck call has not returned yet."""


class DeadlineExceeded(Exception):
    """The call did not finish in time; the worker was abandoned."""


class WorkerAbandoned(Exception):
    """A call was submitted to a worker abandoned by an earlier deadline."""


class WorkerClosed(Exception):
    """A call was submitted to a worker after `close()`."""


def abandoned_workers() -> int:
    """How many abandoned workers are still blocked in a native call (for health reports)."""
    return _ABANDONED_ALIVE.value


class ExchangeWorker:
    """One thread, one call at a time, each with a deadline."""

    def __init__(self, name: str, finaliser: Callable[[], None] | None = None) -> None:
        """`finaliser` runs on the worker thread as it ends, after a close or a stuck call."""
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]] | None] = queue.SimpleQueue()
        self._abandoned = threading.Event()
        self._closed = False
        self._finaliser = finaliser
        self._thread = threading.Thread(target=self._run, name=f"exchange-{name}", daemon=True)
        self._thread.start()

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    def call(self, function: Callable[[], T], timeout: float) -> T:
        """Run `function` on the worker; its exception or result comes back here.

        Raises DeadlineExceeded after `timeout` seconds, WorkerAbandoned if an earlier call
        already timed out (the thread is still stuck in it), WorkerClosed after `close()`.
        One caller at a time: a worker serves one card session.
        """
        if self._abandoned.is_set():
            raise WorkerAbandoned(self.name)
        if self._closed:
            raise WorkerClosed(self.name)
        future: Future[object] = Future()
        self._jobs.put((function, future))
        try:
            return future.result(timeout)  # type: ignore[return-value]
        except FutureTimeout:
            if future.cancel():
                # Never started: a previous call is still running; nothing is stuck on our behalf.
                raise DeadlineExceeded(self.name) from None
            if future.done():
                return future.result()  # type: ignore[return-value]  # finished at the deadline
            self._abandon()
            raise DeadlineExceeded(self.name) from None
        except CancelledError:
            # Drained unrun: the worker was closed, or abandoned by another caller, meanwhile.
            raise WorkerClosed(self.name) from None

    def close(self) -> None:
        """Stop the worker after its current call, then run the finaliser on the worker thread.

        Never blocks: an abandoned worker runs the finaliser whenever its stuck call returns.
        """
        self._closed = True
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (tests); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _abandon(self) -> None:
        if self._abandoned.is_set():
            return
        self._abandoned.set()
        _ABANDONED_ALIVE.add(1)
        _log.warning("exchange_abandoned", worker=self.name)
        self._jobs.put(None)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._wind_down()

    def _serve(self) -> None:
        """Run the submitted calls until closed, or until the call it was abandoned in returns."""
        while True:
            job = self._jobs.get()
            if job is None:
                break
            function, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = function()
            except Exception as error:  # noqa: BLE001 - handed to the caller, which re-raises it
                future.set_exception(error)
            else:
                future.set_result(result)
            if self._abandoned.is_set():
                _log.info("exchange_abandoned_call_returned", worker=self.name)
                break

    def _wind_down(self) -> None:
        """Cancel what was queued behind a stuck call, run the finaliser, and be counted out."""
        # Drain what was queued behind the stuck call: nobody waits for those answers.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[1].cancel()
        if self._finaliser is not None:
            try:
                self._finaliser()
            except Exception as error:  # noqa: BLE001 - a failed cleanup is logged, the thread still ends
                _log.warning("exchange_finaliser_failed", worker=self.name, error=repr(error))
        if self._abandoned.is_set():
            _ABANDONED_ALIVE.add(-1)
