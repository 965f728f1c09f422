"""PC/SC readers through pyscard's low-level `smartcard.scard` API.

Why not pyscard's CardMonitor/ReaderMonitor: they are process-wide singletons that die for
good when pcscd restarts (readers.md §3.2). This backend owns the PC/SC context lifecycle:

- Waiting uses SCardGetStatusChange over every reader whose name matches the configured
  pattern, plus the `\\\\?PnP?\\Notification` pseudo-reader (readers plugged or unplugged),
  feeding back each reader's last event state. pcscd keeps a per-reader event counter in the
  upper 16 bits of that state and counts every insertion and removal, so a card swapped, or
  tapped and gone, between two calls is still seen (counted in `missed_taps` when it left
  before anyone could read it).
- One context per thread (pcsc-lite's rule): the thread that waits has its own context, and
  the card session runs on an exchange worker thread with another one. SCardCancel, the one
  call allowed across threads, wakes a wait at once when the cancel event is set.
- On SCARD_E_NO_SERVICE, SERVICE_STOPPED, COMM_ERROR or an invalid handle the context is
  dropped and the call raises ReaderUnavailable; the next call establishes a new context. An
  old context stays broken after a pcscd restart although SCardIsValidContext says it is fine,
  so it is never reused. The retry pacing (backoff) belongs to the caller, see loop.py.
- A card lost mid-APDU (SCARD_E_NOT_TRANSACTED, SCARD_W_REMOVED_CARD, a success with an empty
  response when the vpcd card process died) raises CardRemoved. A transmit that never returns
  (vpcd has no timeout) raises TransmitTimeout at the deadline; the stuck call is left to its
  worker thread, see watchdog.py.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from smartcard import scard

from reader.backends.atr import AtrInfo, classify_atr, read_uid
from reader.backends.base import (
    CardRemoved,
    ReaderError,
    ReaderKind,
    ReaderUnavailable,
    TransmitTimeout,
    WaitCancelled,
    cancel_hook,
)
from reader.backends.settings import PcscSettings
from reader.backends.watchdog import DeadlineExceeded, ExchangeWorker, WorkerAbandoned, WorkerClosed
from reader.log import get_logger

PNP_NOTIFICATION = "\\\\?PnP?\\Notification"
T = TypeVar("T")

_OK = scard.SCARD_S_SUCCESS
_SERVICE_GONE = frozenset(
    {
        scard.SCARD_E_NO_SERVICE,
        scard.SCARD_E_SERVICE_STOPPED,
        scard.SCARD_F_COMM_ERROR,
        scard.SCARD_E_INVALID_HANDLE,
    }
)
_READER_GONE = frozenset(
    {scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_NO_READERS_AVAILABLE}
)
_CARD_GONE = frozenset(
    {
        scard.SCARD_E_NOT_TRANSACTED,
        scard.SCARD_W_REMOVED_CARD,
        scard.SCARD_W_RESET_CARD,
        scard.SCARD_W_UNPOWERED_CARD,
        scard.SCARD_W_UNRESPONSIVE_CARD,
        scard.SCARD_E_NO_SMARTCARD,
    }
)
_GONE_STATES = scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE | scard.SCARD_STATE_IGNORE

_log = get_logger(component="pcsc")


def _code(hresult: int) -> int:
    return hresult & 0xFFFFFFFF


def _describe(hresult: int) -> str:
    return f"{scard.SCardGetErrorMessage(hresult)} ({_code(hresult):#010x})"


def _error(label: str, hresult: int, what: str) -> ReaderError:
    """The typed error for a failed PC/SC call."""
    code = _code(hresult)
    message = f"{what} failed: {_describe(hresult)}"
    if code in _CARD_GONE:
        return CardRemoved(label, message)
    if code in _SERVICE_GONE or code in _READER_GONE:
        return ReaderUnavailable(label, message)
    return ReaderError(label, message)


def _establish(label: str) -> int:
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != _OK:
        raise ReaderUnavailable(label, f"SCardEstablishContext failed: {_describe(hresult)}")
    context_handle: int = context
    return context_handle


def _release(label: str, context: int) -> None:
    hresult = scard.SCardReleaseContext(context)
    if hresult != _OK:
        # Expected after a pcscd restart: the old context died with the old daemon.
        _log.debug("pcsc_release_context_failed", reader=label, error=_describe(hresult))


def _present(state: int) -> bool:
    return bool(state & scard.SCARD_STATE_PRESENT) and not state & _GONE_STATES


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(timeout, 0.0)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


# --------------------------------------------------------------------------- card session


class _Session:
    """The card-session side of one reader: an exchange worker with its own PC/SC context.

    Every `_on_worker_*` method runs on the worker thread, which alone touches the context
    and the card handle.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._context: int | None = None
        self._handle: int | None = None
        self._generation = 0
        self.worker = ExchangeWorker(label, finaliser=self._on_worker_finish)

    def call(self, function: Callable[[], T], timeout: float, what: str) -> T:
        try:
            return self.worker.call(function, timeout)
        except DeadlineExceeded:
            raise TransmitTimeout(self.label, f"{what}: no answer within {timeout:.3g} s") from None
        except WorkerAbandoned:
            raise TransmitTimeout(self.label, f"{what}: an earlier exchange is still stuck in the driver") from None
        except WorkerClosed:
            raise ReaderError(self.label, f"{what}: the reader is closed") from None

    def _on_worker_context(self) -> int:
        if self._context is None:
            self._context = _establish(self.label)
        return self._context

    def _on_worker_drop(self) -> None:
        """Forget the context: after a service failure it can never work again."""
        self._handle = None
        if self._context is not None:
            context, self._context = self._context, None
            _release(self.label, context)

    def _on_worker_disconnect(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        hresult = scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        if hresult != _OK:
            _log.debug("pcsc_disconnect_failed", reader=self.label, error=_describe(hresult))

    def _on_worker_finish(self) -> None:
        self._on_worker_disconnect()
        self._on_worker_drop()

    def on_worker_connect(self, reader: str) -> tuple[int, int]:
        """Connect to the card in `reader`; returns (generation, active protocol).

        The session context may predate a pcscd restart that the waiting context has already
        recovered from; it then fails with a service error, and one fresh context is tried at
        once rather than making the whole tap wait for the caller's backoff.
        """
        self._on_worker_disconnect()
        fresh = self._context is None
        context = self._on_worker_context()
        hresult, handle, protocol = scard.SCardConnect(
            context, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        if _code(hresult) in _SERVICE_GONE and not fresh:
            self._on_worker_drop()
            context = self._on_worker_context()
            hresult, handle, protocol = scard.SCardConnect(
                context, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
            )
        if hresult != _OK:
            error = _error(self.label, hresult, "SCardConnect")
            if _code(hresult) in _SERVICE_GONE:
                self._on_worker_drop()
            raise error
        self._handle = handle
        self._generation += 1
        return self._generation, protocol

    def on_worker_transmit(self, generation: int, protocol: int, apdu: bytes) -> bytes:
        if generation != self._generation or self._handle is None:
            raise CardRemoved(self.label, "the card session has ended")
        hresult, response = scard.SCardTransmit(self._handle, protocol, list(apdu))
        if hresult != _OK:
            error = _error(self.label, hresult, "SCardTransmit")
            if _code(hresult) in _SERVICE_GONE:
                self._on_worker_drop()
            elif isinstance(error, CardRemoved):
                self._on_worker_disconnect()
            raise error
        if not response:
            # vpcd reports success with no bytes when the card process went away mid-APDU.
            self._on_worker_disconnect()
            raise CardRemoved(self.label, "empty response: the card stopped answering")
        if len(response) < 2:
            raise ReaderError(self.label, f"a {len(response)}-byte response has no status word")
        return bytes(response)

    def on_worker_close(self, generation: int) -> None:
        if generation == self._generation:
            self._on_worker_disconnect()


class PcscChannel:
    """An open card session on one PC/SC reader; not shared between threads."""

    def __init__(
        self,
        label: str,
        kind: ReaderKind,
        session: _Session,
        reader_name: str,
        atr: bytes,
        generation: int,
        protocol: int,
        default_timeout: float,
    ) -> None:
        self._label = label
        self._kind = kind
        self._session = session
        self.reader_name = reader_name
        self._atr = atr
        self._generation = generation
        self.protocol = protocol
        self.default_timeout = default_timeout
        self._dead: type[ReaderError] | None = None
        self._closed = False
        self._uid: bytes | None = None
        self._uid_read = False

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def info(self) -> AtrInfo:
        return classify_atr(self._atr)

    @property
    def uid(self) -> bytes | None:
        """The UID through `FF CA 00 00 00`, read on first use (a contactless reader only).

        It costs one exchange, so a tap that does not need it does not pay for it; it can
        raise CardRemoved or TransmitTimeout like any exchange.
        """
        if not self._uid_read:
            if self._kind is ReaderKind.CONTACTLESS and self.info.contactless:
                self._uid = read_uid(self.transmit)
            self._uid_read = True
        return self._uid

    def transmit(self, apdu: bytes, timeout: float | None = None) -> bytes:
        if self._closed:
            raise ReaderError(self._label, "the channel is closed")
        if self._dead is not None:
            raise self._dead(self._label, "the channel failed earlier; wait for the next card")
        deadline = self.default_timeout if timeout is None else timeout
        session = self._session
        try:
            response = session.call(
                lambda: session.on_worker_transmit(self._generation, self.protocol, apdu),
                deadline,
                f"APDU {apdu[:4].hex().upper()}",
            )
        except TransmitTimeout:
            self._dead = TransmitTimeout
            _log.error("pcsc_transmit_timeout", reader=self._label, header=apdu[:4].hex(), deadline_s=deadline)
            raise
        except CardRemoved as error:
            self._dead = CardRemoved
            _log.info("pcsc_card_removed_mid_apdu", reader=self._label, error=str(error))
            raise
        except ReaderUnavailable:
            self._dead = ReaderUnavailable
            raise
        return response

    def close(self) -> None:
        """Disconnect (leaving the card powered); never blocks on a stuck worker."""
        if self._closed:
            return
        self._closed = True
        if self._session.worker.abandoned or self._session.worker.closed:
            return
        session, generation = self._session, self._generation
        try:
            session.call(lambda: session.on_worker_close(generation), self.default_timeout, "disconnect")
        except ReaderError as error:
            _log.info("pcsc_disconnect_error", reader=self._label, error=str(error))


# --------------------------------------------------------------------------- reader


class PcscReader:
    """The readers whose PC/SC name matches a pattern, seen as one slot.

    Usually the pattern names one reader (the contactless slot, or the SAM slot); when it
    matches several, a card in any of them is returned and `PcscChannel.reader_name` says
    which. `exclude` keeps the SAM slot out of a broad contactless pattern.

    One thread waits at a time (the driver loop's); another thread may cancel the wait
    through the cancel event or `close()`.
    """

    def __init__(
        self,
        pattern: str,
        kind: ReaderKind = ReaderKind.CONTACTLESS,
        *,
        exclude: str | None = None,
        name: str | None = None,
        transmit_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        poll_slice: float = 0.5,
    ) -> None:
        self._pattern = re.compile(pattern, re.IGNORECASE)
        self._exclude = re.compile(exclude, re.IGNORECASE) if exclude else None
        self._name = name or f"pcsc:{pattern}"
        self._kind = kind
        self.transmit_timeout = transmit_timeout
        self.connect_timeout = connect_timeout
        self.poll_slice = poll_slice
        self.missed_taps = 0
        self._log = get_logger(component="pcsc", reader=self._name)
        self._context_lock = threading.Lock()
        self._context: int | None = None
        self._context_owner: int | None = None
        self._names: list[str] | None = None
        self._states: dict[str, int] = {}
        self._atrs: dict[str, bytes] = {}
        self._pnp_state = scard.SCARD_STATE_UNAWARE
        self._refused: dict[str, int] = {}
        self._current: tuple[str, int] | None = None
        self._session: _Session | None = None
        self._closed = threading.Event()
        self._missing_logged = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> ReaderKind:
        return self._kind

    def matches(self, reader_name: str) -> bool:
        """Whether a PC/SC reader name belongs to this slot."""
        if self._exclude is not None and self._exclude.search(reader_name):
            return False
        return self._pattern.search(reader_name) is not None

    # ----------------------------------------------------------------- the Reader interface

    def wait_for_card(self, timeout: float | None, cancel: threading.Event) -> PcscChannel | None:
        deadline = _deadline(timeout)
        looked = False  # even a zero timeout asks pcscd once: the known states may be old
        with cancel_hook(cancel, self._interrupt):
            while True:
                self._check_open(cancel)
                if self._needs_refresh():
                    self._wait_change(0.0, cancel)
                    looked = True
                    continue
                channel = self._take_present_card()
                if channel is not None:
                    return channel
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0 and looked:
                    return None
                self._wait_change(self._slice(remaining), cancel)
                looked = True

    def wait_for_removal(self, timeout: float | None, cancel: threading.Event) -> bool:
        deadline = _deadline(timeout)
        looked = False
        with cancel_hook(cancel, self._interrupt):
            while True:
                self._check_open(cancel)
                if self._current is None:
                    return True
                if self._needs_refresh():
                    self._wait_change(0.0, cancel)
                    looked = True
                    continue
                reader, counter = self._current
                state = self._states.get(reader)
                if state is None or not _present(state) or state >> 16 != counter:
                    self._log.debug("pcsc_card_gone", pcsc_reader=reader)
                    self._current = None
                    return True
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0 and looked:
                    return False
                self._wait_change(self._slice(remaining), cancel)
                looked = True

    def close(self) -> None:
        """Release everything; a wait in another thread ends with WaitCancelled."""
        self._closed.set()
        self._interrupt()
        with self._context_lock:
            context, self._context = self._context, None
        if context is not None:
            _release(self._name, context)
        if self._session is not None:
            self._session.worker.close()
            self._session = None

    # ----------------------------------------------------------------- waiting internals

    def _check_open(self, cancel: threading.Event) -> None:
        if self._closed.is_set():
            raise WaitCancelled(self._name, "reader closed")
        if cancel.is_set():
            raise WaitCancelled(self._name, "wait cancelled")

    def _slice(self, remaining: float | None) -> float:
        return self.poll_slice if remaining is None else max(0.0, min(remaining, self.poll_slice))

    def _needs_refresh(self) -> bool:
        if self._names is None:
            return True
        return any(name not in self._states for name in self._names)

    def _interrupt(self) -> None:
        """SCardCancel on the waiting context: allowed from any thread."""
        with self._context_lock:
            context = self._context
        if context is not None:
            scard.SCardCancel(context)

    def _wait_context(self) -> int:
        me = threading.get_ident()
        stale: int | None = None
        with self._context_lock:
            if self._context is not None and self._context_owner != me:
                stale, self._context = self._context, None
        if stale is not None:
            _release(self._name, stale)
        with self._context_lock:
            if self._context is None:
                self._context = _establish(self._name)
                self._context_owner = me
            return self._context

    def _drop_context(self, why: str) -> None:
        """The service went away: nothing learnt from the old pcscd is valid any more."""
        with self._context_lock:
            context, self._context = self._context, None
        if context is not None:
            _release(self._name, context)
        self._names = None
        self._states.clear()
        self._atrs.clear()
        self._refused.clear()
        self._pnp_state = scard.SCARD_STATE_UNAWARE
        self._log.warning("pcsc_context_dropped", error=why)

    def _service_call_failed(self, hresult: int, what: str) -> ReaderUnavailable:
        message = f"{what} failed: {_describe(hresult)}"
        self._drop_context(message)
        return ReaderUnavailable(self._name, message)

    def _list_readers(self, context: int) -> None:
        hresult, names = scard.SCardListReaders(context, [])
        code = _code(hresult)
        if code == scard.SCARD_E_NO_READERS_AVAILABLE:
            names = []
        elif code != _OK:
            raise self._service_call_failed(hresult, "SCardListReaders")
        matching = [name for name in names if self.matches(name)]
        if matching != self._names:
            if matching:
                self._log.info("pcsc_readers_matched", pcsc_readers=matching)
                self._missing_logged = False
            elif not self._missing_logged:
                self._log.warning("pcsc_reader_missing", listed=list(names))
                self._missing_logged = True
        for gone in set(self._states) - set(matching):
            del self._states[gone]
        self._names = matching

    def _wait_change(self, timeout: float, cancel: threading.Event) -> None:
        """One SCardGetStatusChange; updates the known states, returns on change or timeout."""
        context = self._wait_context()
        if self._names is None:
            self._list_readers(context)
        names = self._names or []
        query = [(name, self._states.get(name, scard.SCARD_STATE_UNAWARE)) for name in names]
        query.append((PNP_NOTIFICATION, self._pnp_state))
        hresult, result = scard.SCardGetStatusChange(context, int(timeout * 1000), query)
        code = _code(hresult)
        if code == scard.SCARD_E_CANCELLED:
            return
        if code in _READER_GONE:
            # A reader went away between listing and waiting: list again, after a breath, so
            # that a reader flapping on its USB port cannot spin this thread.
            self._names = None
            cancel.wait(0.05)
            return
        if code not in (_OK, scard.SCARD_E_TIMEOUT):
            raise self._service_call_failed(hresult, "SCardGetStatusChange")
        self._absorb(result)
        if not names:
            # Nothing matched: list again each slice, whatever the PnP reader says.
            self._names = None

    def _absorb(self, result: list[tuple[str, int, list[int]]]) -> None:
        for name, event, atr in result:
            state = event & ~scard.SCARD_STATE_CHANGED
            if name == PNP_NOTIFICATION:
                if event & scard.SCARD_STATE_CHANGED:
                    self._log.info("pcsc_reader_list_changed")
                    self._names = None
                self._pnp_state = state
                continue
            if state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_IGNORE):
                self._states.pop(name, None)
                self._names = None
                continue
            previous = self._states.get(name)
            if previous is not None:
                self._count_missed(name, previous, state)
            self._states[name] = state
            self._atrs[name] = bytes(atr)

    def _count_missed(self, name: str, previous: int, state: int) -> None:
        """Cards that came and went between two looks, from pcscd's event counter."""
        if not previous >> 16:
            return  # pcsc-lite does not count for a caller that never saw a counter
        delta = ((state >> 16) - (previous >> 16)) & 0xFFFF
        was, now = _present(previous), _present(state)
        expected = 1 if was != now else (2 if was and delta else 0)
        missed = max(0, delta - expected) // 2
        if missed:
            self.missed_taps += missed
            self._log.warning("pcsc_taps_missed", pcsc_reader=name, count=missed)

    def _take_present_card(self) -> PcscChannel | None:
        for reader in self._names or []:
            state = self._states.get(reader)
            if state is None or not _present(state):
                continue
            counter = state >> 16
            if self._refused.get(reader) == counter:
                continue
            if state & scard.SCARD_STATE_MUTE:
                self._log.warning("pcsc_card_mute", pcsc_reader=reader)
                self._refused[reader] = counter
                continue
            channel = self._open(reader, counter, self._atrs.get(reader, b""))
            if channel is not None:
                return channel
        return None

    def _session_worker(self) -> _Session:
        if self._session is None or self._session.worker.abandoned:
            self._session = _Session(self._name)
        return self._session

    def _open(self, reader: str, counter: int, atr: bytes) -> PcscChannel | None:
        self._current = (reader, counter)
        session = self._session_worker()
        try:
            opened = session.call(lambda: session.on_worker_connect(reader), self.connect_timeout, "connect")
        except CardRemoved as error:
            self._log.info("pcsc_card_left_before_connect", pcsc_reader=reader, error=str(error))
            self._refused[reader] = counter
            self._current = None
            return None
        generation, protocol = opened
        self._log.debug("pcsc_connected", pcsc_reader=reader, protocol=protocol)
        return PcscChannel(self._name, self._kind, session, reader, atr, generation, protocol, self.transmit_timeout)


# --------------------------------------------------------------------------- listings


@dataclass(frozen=True)
class PcscReaderState:
    """One reader as pcscd sees it at one moment."""

    name: str
    present: bool
    atr: bytes
    in_use: bool
    unavailable: bool


def _check(hresult: int, what: str) -> None:
    if hresult != scard.SCARD_S_SUCCESS:
        raise ReaderUnavailable("pcsc", f"{what} failed: {_describe(hresult)}")


def reader_states() -> list[PcscReaderState]:
    """Every PC/SC reader with its card state, read without waiting."""
    context = _establish("pcsc")
    try:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        _check(hresult, "SCardListReaders")
        hresult, states = scard.SCardGetStatusChange(context, 0, [(name, scard.SCARD_STATE_UNAWARE) for name in names])
        _check(hresult, "SCardGetStatusChange")
        return [
            PcscReaderState(
                name=name,
                present=bool(event & scard.SCARD_STATE_PRESENT),
                atr=bytes(atr),
                in_use=bool(event & scard.SCARD_STATE_INUSE),
                unavailable=bool(event & scard.SCARD_STATE_UNAVAILABLE),
            )
            for name, event, atr in states
        ]
    finally:
        _release("pcsc", context)


def contactless_reader(settings: PcscSettings) -> PcscReader:
    """The tap slot; a reader matching the SAM pattern is never taken for it."""
    return PcscReader(
        settings.contactless,
        ReaderKind.CONTACTLESS,
        exclude=settings.sam,
        name="pcsc-contactless",
        transmit_timeout=settings.transmit_timeout,
        connect_timeout=settings.connect_timeout,
    )


def sam_reader(settings: PcscSettings) -> PcscReader | None:
    """The PSAM slot: a long-lived channel, opened once and reopened after a fault."""
    if settings.sam is None:
        return None
    return PcscReader(
        settings.sam,
        ReaderKind.SAM,
        name="pcsc-sam",
        transmit_timeout=settings.transmit_timeout,
        connect_timeout=settings.connect_timeout,
    )
