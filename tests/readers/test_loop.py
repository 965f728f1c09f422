"""The generic driver loop, over the in-process reader and over PC/SC."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest

from reader.backends.base import CardChannel, ReaderKind
from reader.backends.loop import LoopState, ReaderLoop, all_alive
from reader.backends.pcsc import PcscReader
from reader.backoff import Backoff
from sscard_sim.inprocess import InProcessReader
from sscard_sim.vpcd import VpcdLink
from tests.readers.cards import GET_DATA, READ_BINARY, SELECT, CountingCard, HangingCard, LeavingCard
from tests.readers.conftest import POLL_BOUND, SLACK

BOUND = 2.0  # generous bound for in-process events (they take microseconds)


def until(condition: Callable[[], bool], timeout: float = BOUND) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class Recorder:
    """A processing callback that runs a script of APDUs and records what it saw."""

    def __init__(self, *apdus: bytes) -> None:
        self.apdus = apdus or (SELECT,)
        self.seen: queue.Queue[list[bytes]] = queue.Queue()

    def __call__(self, channel: CardChannel, tap_id: str) -> None:
        self.seen.put([channel.transmit(apdu) for apdu in self.apdus])


@pytest.fixture
def loops() -> Iterator[list[ReaderLoop]]:
    started: list[ReaderLoop] = []
    yield started
    for loop in started:
        assert loop.stop(), f"loop for {loop.reader.name} did not stop"
        loop.reader.close()


def run(loops: list[ReaderLoop], reader: Any, process: Callable[[CardChannel], None], **options: Any) -> ReaderLoop:
    loop = ReaderLoop(reader, process, **options)
    loops.append(loop)
    loop.start()
    return loop


def test_each_tap_is_processed_once(loops: list[ReaderLoop]) -> None:
    reader = InProcessReader("gate")
    recorder = Recorder(SELECT, GET_DATA)
    loop = run(loops, reader, recorder)
    for _ in range(3):
        reader.insert(CountingCard())
        assert recorder.seen.get(timeout=BOUND) == [b"\x90\x00", bytes.fromhex("00029000")]
        assert until(lambda: loop.state is LoopState.WAITING_REMOVAL)
        reader.remove()
        assert until(lambda: loop.state is LoopState.WAITING)
    assert recorder.seen.empty()
    assert (loop.taps, loop.failures) == (3, 0)
    assert loop.alive()


def test_a_card_left_on_the_reader_is_not_processed_twice(loops: list[ReaderLoop]) -> None:
    reader = InProcessReader("gate")
    recorder = Recorder()
    loop = run(loops, reader, recorder, wait_slice=0.05)
    reader.insert(CountingCard())
    recorder.seen.get(timeout=BOUND)
    time.sleep(0.3)  # six wait slices with the card still there
    assert recorder.seen.empty()
    assert loop.taps == 1


def test_card_removed_during_processing_is_logged_and_the_loop_goes_on(
    loops: list[ReaderLoop], logs: list[MutableMapping[str, Any]]
) -> None:
    reader = InProcessReader("gate")
    recorder = Recorder(SELECT, READ_BINARY)
    loop = run(loops, reader, recorder)
    card = LeavingCard()
    card.leave = reader.remove
    card.gone = lambda: not card.powered
    reader.insert(card)
    assert until(lambda: loop.failures == 1 and loop.state is LoopState.WAITING)
    reader.insert(CountingCard())
    assert recorder.seen.get(timeout=BOUND)[0] == b"\x90\x00"
    removed = [entry for entry in logs if entry["event"] == "card_removed_during_processing"]
    assert len(removed) == 1
    assert removed[0]["reader"] == "gate"
    assert removed[0]["tap_id"]


def test_a_hung_card_times_out_and_the_next_card_is_served(loops: list[ReaderLoop]) -> None:
    reader = InProcessReader("gate", transmit_timeout=0.2)
    recorder = Recorder(SELECT, READ_BINARY)
    hung = HangingCard()
    try:
        loop = run(loops, reader, recorder)
        reader.insert(hung)
        assert until(lambda: loop.failures == 1)
        assert loop.state is LoopState.WAITING_REMOVAL
        reader.insert(CountingCard())  # the hung card is taken away, a good one presented
        assert recorder.seen.get(timeout=BOUND) == [b"\x90\x00", bytes.fromhex("00029000")]
    finally:
        hung.release.set()


def test_a_bug_in_processing_does_not_stop_the_reader(
    loops: list[ReaderLoop], logs: list[MutableMapping[str, Any]]
) -> None:
    reader = InProcessReader("gate")
    calls: queue.Queue[int] = queue.Queue()

    def process(channel: CardChannel, tap_id: str) -> None:
        calls.put(1)
        raise ZeroDivisionError("bug in card code")

    loop = run(loops, reader, process)
    for _ in range(2):
        reader.insert(CountingCard())
        calls.get(timeout=BOUND)
        assert until(lambda: loop.state is LoopState.WAITING_REMOVAL)
        reader.remove()
    assert loop.failures == 2
    assert loop.alive()
    assert sum(entry["event"] == "card_processing_crashed" for entry in logs) == 2


def test_reader_unavailable_is_retried_with_backoff_until_it_returns(
    loops: list[ReaderLoop], logs: list[MutableMapping[str, Any]]
) -> None:
    reader = InProcessReader("gate")
    recorder = Recorder()
    loop = run(loops, reader, recorder, backoff=Backoff(initial=0.01, cap=0.05, jitter=False))
    reader.unplug()
    assert until(lambda: loop.state is LoopState.RECOVERING)
    time.sleep(0.2)  # several attempts while the reader is away
    assert loop.status().unavailable_since is not None
    reader.plug()
    reader.insert(CountingCard())
    assert recorder.seen.get(timeout=BOUND) == [b"\x90\x00"]
    events = [entry["event"] for entry in logs]
    assert events.count("reader_unavailable") == 1  # logged once, not once per attempt
    assert events.count("reader_still_unavailable") >= 2
    assert events.count("reader_recovered") == 1
    assert loop.status().unavailable_since is None


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial=0.05, multiplier=2.0, cap=0.3, jitter=False)
    assert [backoff.next_delay() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next_delay() == 0.05


def test_stop_wakes_a_long_wait_at_once(loops: list[ReaderLoop]) -> None:
    reader = InProcessReader("gate")
    loop = ReaderLoop(reader, Recorder(), wait_slice=60.0)
    loop.start()
    assert until(lambda: loop.state is LoopState.WAITING)
    started = time.monotonic()
    assert loop.stop(timeout=BOUND)
    assert time.monotonic() - started < BOUND
    assert loop.state is LoopState.STOPPED
    assert not loop.alive()


def test_liveness_reports_a_stalled_worker(loops: list[ReaderLoop]) -> None:
    reader = InProcessReader("gate")
    unblock = threading.Event()

    def slow(channel: CardChannel) -> None:
        unblock.wait(BOUND)

    loop = run(loops, reader, slow, stall_after=0.1)
    other = run(loops, InProcessReader("other"), Recorder())
    assert until(lambda: loop.state is LoopState.WAITING)
    assert all_alive([loop, other])
    reader.insert(CountingCard())
    assert until(lambda: not loop.alive())  # stuck in processing for longer than stall_after
    assert not all_alive([loop, other])
    unblock.set()
    assert until(loop.alive)


def test_sam_reader_gives_a_channel_that_outlives_taps() -> None:
    sam_slot = InProcessReader("psam", ReaderKind.SAM)
    sam_slot.insert(CountingCard())
    channel = sam_slot.wait_for_card(0.0, threading.Event())
    assert channel is not None
    assert channel.uid is None
    assert [channel.transmit(GET_DATA) for _ in range(3)][-1] == bytes.fromhex("00039000")


def test_loop_over_pcsc_logs_each_step_of_a_tap(
    loops: list[ReaderLoop],
    reader_for: Callable[..., PcscReader],
    present: Callable[..., VpcdLink],
    logs: list[MutableMapping[str, Any]],
) -> None:
    recorder = Recorder(SELECT, GET_DATA)
    loop = run(loops, reader_for(), recorder, wait_slice=0.5)
    for _ in range(2):
        link = present(CountingCard())
        assert recorder.seen.get(timeout=POLL_BOUND + SLACK + 1.0) == [b"\x90\x00", bytes.fromhex("00029000")]
        link.remove()
        assert until(lambda: loop.state is LoopState.WAITING, POLL_BOUND + SLACK + 1.0)
    assert loop.taps == 2
    steps = [entry for entry in logs if entry.get("tap_id")]
    taps = {entry["tap_id"] for entry in steps}
    assert len(taps) == 2
    for tap in taps:
        events = [entry["event"] for entry in steps if entry["tap_id"] == tap]
        assert events[0] == "card_present"
        assert "card_processed" in events
        assert events[-1] == "card_removed"
    assert all(entry["reader"] == "test-00" for entry in steps)
    present_events = [entry for entry in steps if entry["event"] == "card_present"]
    assert present_events[0]["card"] == "contactless iso14443-4"
