"""PC/SC faults on the real bench: cards pulled mid-APDU, cards that never answer, pcscd restarts."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator

import pytest

from reader.backends.base import CardChannel, CardRemoved, ReaderUnavailable, TransmitTimeout
from reader.backends.loop import ReaderLoop
from reader.backends.pcsc import PcscReader
from reader.backends.watchdog import abandoned_workers
from sscard_sim.pcscd import PcscdBench
from sscard_sim.vpcd import VpcdLink
from tests.readers.cards import GET_DATA, READ_BINARY, SELECT, CountingCard, HangingCard, LeavingCard
from tests.readers.conftest import POLL_BOUND, SLACK

Present = Callable[..., VpcdLink]
ReaderFor = Callable[..., PcscReader]

RECOVERY_BOUND = 2.0  # the requirement: the next card is read within 2 s of pcscd's return


@pytest.fixture
def hanging_card() -> Iterator[HangingCard]:
    card = HangingCard()
    yield card
    card.release.set()


def open_channel(reader: PcscReader, cancel: object) -> CardChannel:
    channel = reader.wait_for_card(POLL_BOUND + SLACK, cancel)  # type: ignore[arg-type]
    assert channel is not None, "pcscd never reported the card"
    return channel


def test_card_pulled_during_an_apdu_gives_one_card_removed(
    reader_for: ReaderFor, present: Present, cancel: object
) -> None:
    card = LeavingCard()
    link = present(card)
    card.leave = link.remove
    card.gone = lambda: not link.inserted
    reader = reader_for(transmit_timeout=5.0)
    channel = open_channel(reader, cancel)
    assert channel.transmit(SELECT) == b"\x90\x00"

    started = time.monotonic()
    with pytest.raises(CardRemoved):
        channel.transmit(READ_BINARY)
    # CardRemoved, not TransmitTimeout at 5 s: the vanished card did not hang the exchange.
    assert time.monotonic() - started < 5.0
    with pytest.raises(CardRemoved):
        channel.transmit(GET_DATA)  # the channel stays dead, without asking pcscd again
    channel.close()
    assert reader.wait_for_removal(POLL_BOUND + SLACK, cancel)  # type: ignore[arg-type]


@pytest.mark.parametrize("seen_by_pcscd", [False, True], ids=["before-poll", "after-poll"])
def test_card_pulled_between_apdus_gives_card_removed(
    reader_for: ReaderFor, present: Present, cancel: object, seen_by_pcscd: bool
) -> None:
    """Before pcscd's poll the driver fails the exchange (NOT_TRANSACTED); after it, REMOVED_CARD."""
    link = present(CountingCard())
    reader = reader_for()
    channel = open_channel(reader, cancel)
    assert channel.transmit(SELECT) == b"\x90\x00"
    link.remove()
    if seen_by_pcscd:
        assert reader.wait_for_removal(POLL_BOUND + SLACK, cancel)  # type: ignore[arg-type]
    with pytest.raises(CardRemoved):
        channel.transmit(GET_DATA)
    channel.close()


def test_a_card_that_never_answers_trips_the_watchdog(
    reader_for: ReaderFor, present: Present, cancel: object, hanging_card: HangingCard
) -> None:
    link = present(hanging_card)
    reader = reader_for()
    channel = open_channel(reader, cancel)
    assert channel.transmit(SELECT) == b"\x90\x00"
    baseline = abandoned_workers()

    deadline = 0.5
    started = time.monotonic()
    with pytest.raises(TransmitTimeout):
        channel.transmit(READ_BINARY, timeout=deadline)
    elapsed = time.monotonic() - started
    assert hanging_card.hung.is_set()
    assert deadline <= elapsed < deadline + SLACK
    assert abandoned_workers() == baseline + 1  # the SCardTransmit is still stuck in its worker

    with pytest.raises(TransmitTimeout):
        channel.transmit(GET_DATA, timeout=5.0)  # refused at once: the channel is spent
    channel.close()  # must not block on the stuck worker

    # The card finally answers: the abandoned worker returns, cleans up and ends.
    hanging_card.release.set()
    for _ in range(200):
        if abandoned_workers() == baseline:
            break
        time.sleep(0.01)
    assert abandoned_workers() == baseline

    # The reader serves the next card on a fresh session.
    link.remove()
    assert reader.wait_for_removal(POLL_BOUND + SLACK, cancel)  # type: ignore[arg-type]
    present(CountingCard())
    channel = open_channel(reader, cancel)
    assert channel.transmit(SELECT) == b"\x90\x00"
    channel.close()


def test_an_open_channel_fails_fast_when_pcscd_restarts(
    pcscd: PcscdBench, reader_for: ReaderFor, present: Present, cancel: object
) -> None:
    if not pcscd.owned:
        pytest.skip("pcscd was not started by the bench: not ours to restart")
    present(CountingCard())
    reader = reader_for()
    channel = open_channel(reader, cancel)
    pcscd.restart()
    with pytest.raises((ReaderUnavailable, CardRemoved)):
        channel.transmit(SELECT, timeout=5.0)
    channel.close()


def _select(results: queue.Queue[str]) -> Callable[[CardChannel, str], None]:
    def process(channel: CardChannel, tap_id: str) -> None:
        results.put(channel.transmit(SELECT).hex())

    return process


@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_loop_recovers_after_pcscd_restart_and_reads_the_next_card_within_2_s(
    pcscd: PcscdBench, reader_for: ReaderFor, present: Present, how: str
) -> None:
    if not pcscd.owned:
        pytest.skip("pcscd was not started by the bench: not ours to restart")
    results: queue.Queue[str] = queue.Queue()
    loop = ReaderLoop(reader_for(), _select(results), wait_slice=0.5)
    loop.start()
    try:
        first = present(CountingCard())
        assert results.get(timeout=POLL_BOUND + SLACK + 1.0) == "9000"
        first.remove()

        if how == "terminate":
            pcscd.restart()
        else:
            assert pcscd.process is not None
            pcscd.process.kill()
            pcscd.process.wait()
            pcscd.process = None
            pcscd.start()
        back = time.monotonic()
        present(CountingCard())
        assert results.get(timeout=RECOVERY_BOUND) == "9000"
        assert time.monotonic() - back < RECOVERY_BOUND
        assert loop.alive()
        assert loop.taps == 2
    finally:
        assert loop.stop()
