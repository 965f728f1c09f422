"""The in-process reader and the exchange watchdog under it."""

from __future__ import annotations

import threading
import time

import pytest

from reader.backends.base import (
    CancelEvent,
    CardRemoved,
    ReaderError,
    ReaderUnavailable,
    TransmitTimeout,
    WaitCancelled,
)
from reader.backends.watchdog import (
    DeadlineExceeded,
    ExchangeWorker,
    WorkerAbandoned,
    WorkerClosed,
    abandoned_workers,
)
from sscard_sim.inprocess import InProcessReader
from tests.readers.cards import GET_DATA, READ_BINARY, SELECT, CountingCard, HangingCard, LeavingCard


def test_card_channel_round_trip_and_removal() -> None:
    reader = InProcessReader()
    card = CountingCard()
    reader.insert(card)
    channel = reader.wait_for_card(0.0, threading.Event())
    assert channel is not None
    assert card.powered
    assert channel.atr == card.atr()
    assert channel.uid == card.uid
    assert channel.transmit(SELECT) == b"\x90\x00"
    reader.remove()
    assert not card.powered
    with pytest.raises(CardRemoved):
        channel.transmit(GET_DATA)
    assert reader.wait_for_removal(0.0, threading.Event())


def test_card_leaving_mid_command_is_card_removed_not_the_emulator_error() -> None:
    reader = InProcessReader()
    card = LeavingCard()
    card.leave = reader.remove
    card.gone = lambda: not card.powered
    reader.insert(card)
    channel = reader.wait_for_card(0.0, threading.Event())
    assert channel is not None
    with pytest.raises(CardRemoved):
        channel.transmit(READ_BINARY)


def test_an_emulator_bug_with_the_card_present_is_not_disguised() -> None:
    class Broken(CountingCard):
        def transmit(self, apdu: bytes) -> bytes:
            raise KeyError("bug")

    reader = InProcessReader()
    reader.insert(Broken())
    channel = reader.wait_for_card(0.0, threading.Event())
    assert channel is not None
    with pytest.raises(KeyError):
        channel.transmit(SELECT)


def test_hung_card_times_out_and_the_channel_is_spent() -> None:
    reader = InProcessReader(transmit_timeout=5.0)
    card = HangingCard()
    reader.insert(card)
    try:
        channel = reader.wait_for_card(0.0, threading.Event())
        assert channel is not None
        started = time.monotonic()
        with pytest.raises(TransmitTimeout):
            channel.transmit(READ_BINARY, timeout=0.2)
        assert time.monotonic() - started < 1.0
        with pytest.raises(TransmitTimeout):
            channel.transmit(SELECT)
    finally:
        card.release.set()


def test_unplugged_reader_raises_unavailable_until_plugged() -> None:
    reader = InProcessReader()
    reader.insert(CountingCard())
    channel = reader.wait_for_card(0.0, threading.Event())
    assert channel is not None
    reader.unplug()
    with pytest.raises(ReaderUnavailable):
        channel.transmit(SELECT)
    with pytest.raises(ReaderUnavailable):
        reader.wait_for_card(1.0, threading.Event())
    reader.plug()
    assert reader.wait_for_card(0.0, threading.Event()) is None


def test_cancel_and_close_end_waits() -> None:
    reader = InProcessReader()
    cancel = CancelEvent()
    threading.Timer(0.1, cancel.set).start()
    with pytest.raises(WaitCancelled):
        reader.wait_for_card(30.0, cancel)
    threading.Timer(0.1, reader.close).start()
    with pytest.raises(WaitCancelled):
        reader.wait_for_card(30.0, threading.Event())


def test_closed_channel_refuses_commands() -> None:
    reader = InProcessReader()
    reader.insert(CountingCard())
    channel = reader.wait_for_card(0.0, threading.Event())
    assert channel is not None
    channel.close()
    with pytest.raises(ReaderError):
        channel.transmit(SELECT)


def test_worker_returns_results_and_exceptions() -> None:
    worker = ExchangeWorker("unit")
    assert worker.call(lambda: 42, 1.0) == 42
    with pytest.raises(ValueError, match="nope"):
        worker.call(lambda: (_ for _ in ()).throw(ValueError("nope")), 1.0)
    worker.close()
    assert worker.join(1.0)


def test_abandoned_worker_finalises_when_its_call_returns() -> None:
    release = threading.Event()
    finalised = threading.Event()
    worker = ExchangeWorker("stuck", finaliser=finalised.set)
    baseline = abandoned_workers()
    with pytest.raises(DeadlineExceeded):
        worker.call(lambda: release.wait(10), 0.1)
    assert worker.abandoned
    assert abandoned_workers() == baseline + 1
    with pytest.raises(WorkerAbandoned):
        worker.call(lambda: 1, 1.0)
    assert not finalised.is_set()
    release.set()
    assert worker.join(2.0)
    assert finalised.is_set()
    assert abandoned_workers() == baseline


def test_closed_worker_refuses_calls_at_once() -> None:
    worker = ExchangeWorker("closed")
    worker.close()
    assert worker.join(1.0)
    started = time.monotonic()
    with pytest.raises(WorkerClosed):
        worker.call(lambda: 1, 5.0)
    assert time.monotonic() - started < 1.0
    assert not worker.abandoned


def test_channel_after_reader_close_fails_without_waiting() -> None:
    reader = InProcessReader(transmit_timeout=5.0)
    reader.insert(CountingCard())
    channel = reader.wait_for_card(0.0, threading.Event())
    assert channel is not None
    reader.close()
    started = time.monotonic()
    with pytest.raises(ReaderError):
        channel.transmit(SELECT)
    assert time.monotonic() - started < 1.0
