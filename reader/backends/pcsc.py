"""PC/SC readers through pyscard's low-level `smartcard.scard` API."""

from __future__ import annotations

import time
from dataclasses import dataclass

from smartcard import scard

from reader.backends.base import ReaderUnavailable


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
        message = scard.SCardGetErrorMessage(hresult)
        raise ReaderUnavailable("pcsc", f"{what} failed: {message} ({hresult & 0xFFFFFFFF:#010x})")


def reader_states() -> list[PcscReaderState]:
    """Every PC/SC reader with its card state, read without waiting."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    _check(hresult, "SCardEstablishContext")
    try:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        _check(hresult, "SCardListReaders")
        hresult, states = scard.SCardGetStatusChange(
            context, 0, [(name, scard.SCARD_STATE_UNAWARE) for name in names]
        )
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
        scard.SCardReleaseContext(context)


def wait_for_presence(reader: str, present: bool, timeout: float = 3.0) -> bool:
    """Block until pcscd reports `reader` with (or without) a card; False on timeout.

    Used by the bench and the demo, which insert virtual cards and must not race pcscd's
    400 ms presence poll.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {state.name: state for state in reader_states()}
        if reader in states and states[reader].present == present:
            return True
        time.sleep(0.02)
    return False
