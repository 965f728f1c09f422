"""The PSAM slot: one long-lived channel, reopened after a fault, shared by the tap workers.

A PSAM is not tapped: it sits in its contact slot for months, and every purchase and every
third-generation SSSE read needs it. So it is not driven by the loop. `SamSlot` opens the
channel on first use and keeps it; when pcscd restarts or the PSAM is pulled, the failing
command raises (ReaderUnavailable, CardRemoved) and the next command opens a fresh channel.
A failed command is never replayed here: PSAM commands move counters and sessions, and only
the caller knows whether repeating one is safe. `generation` grows with every (re)open, so
the caller knows when the PSAM has lost its state (selected application, session) and must
be set up again. The PSAM's terminal number, a constant every purchase sends the card, is
read as the channel opens and kept with it, so no tap spends a command on it.
"""

from __future__ import annotations

import threading

from protocols.errors import ProtocolError
from protocols.purchase import read_terminal_number
from protocols.status import CardStatusError
from reader.backends.base import (
    CardChannel,
    CardRemoved,
    Reader,
    ReaderError,
    ReaderUnavailable,
    TransmitTimeout,
)
from reader.log import get_logger

_log = get_logger(component="sam-slot")


class SamNotPresent(ReaderError):
    """The SAM slot is there but holds no card (or not yet, after a restart)."""


class SamSlot:
    """Thread-safe access to the PSAM behind a SAM reader; commands are serialised."""

    def __init__(self, reader: Reader, open_timeout: float = 1.0) -> None:
        self.reader = reader
        self.open_timeout = open_timeout
        self.generation = 0
        self.terminal_number: bytes | None = None
        """Read when the channel opened; None if the PSAM did not give it (the purchase asks then)."""
        self._channel: CardChannel | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def name(self) -> str:
        return self.reader.name

    def channel(self) -> CardChannel:
        """The open channel, opening one if needed; raises SamNotPresent or ReaderUnavailable."""
        with self._lock:
            return self._open_locked()

    def transmit(self, apdu: bytes, timeout: float | None = None) -> bytes:
        """One command to the PSAM; a channel that fails is dropped and reopened on the next call."""
        with self._lock:
            channel = self._open_locked()
            try:
                return channel.transmit(apdu, timeout)
            except (ReaderUnavailable, CardRemoved, TransmitTimeout) as error:
                _log.warning("sam_channel_lost", reader=self.reader.name, error=str(error))
                self._drop_locked()
                raise

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self._drop_locked()
            self.reader.close()

    def _open_locked(self) -> CardChannel:
        if self._channel is not None:
            return self._channel
        channel = self.reader.wait_for_card(self.open_timeout, self._closed)
        if channel is None:
            raise SamNotPresent(self.reader.name, "no PSAM in the slot")
        self._channel = channel
        self.generation += 1
        self.terminal_number = None
        try:
            self.terminal_number = read_terminal_number(channel.transmit)
        except (CardStatusError, ProtocolError) as error:
            _log.warning("sam_terminal_number_unread", reader=self.reader.name, error=str(error))
        except (ReaderUnavailable, CardRemoved, TransmitTimeout) as error:
            _log.warning("sam_channel_lost", reader=self.reader.name, error=str(error))
            self._drop_locked()
            raise
        _log.info("sam_channel_opened", reader=self.reader.name, generation=self.generation)
        return channel

    def _drop_locked(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
