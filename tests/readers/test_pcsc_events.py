"""PC/SC card events through the real pcscd + vpcd: insertion, removal, swaps between two calls."""

from __future__ import annotations

import time
from collections.abc import Callable

from reader.backends.base import CancelEvent, ReaderKind, WaitCancelled
from reader.backends.pcsc import PcscChannel, PcscReader
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT0, SLOT1
from tests.readers.cards import GET_DATA, SELECT, CountingCard
from tests.readers.conftest import POLL_BOUND, SLACK

Present = Callable[..., VpcdLink]
ReaderFor = Callable[..., PcscReader]


def test_no_card_times_out(reader_for: ReaderFor, cancel: CancelEvent) -> None:
    assert reader_for().wait_for_card(0.2, cancel) is None


def test_insert_and_remove_are_seen_within_the_poll_bound(
    reader_for: ReaderFor, present: Present, cancel: CancelEvent
) -> None:
    reader = reader_for()
    assert reader.wait_for_card(0.0, cancel) is None
    card = CountingCard()
    link = present(card)
    channel = reader.wait_for_card(POLL_BOUND + SLACK, cancel)
    assert isinstance(channel, PcscChannel)
    assert channel.atr == card.atr()
    assert channel.reader_name == SLOT0
    assert channel.transmit(SELECT) == b"\x90\x00"
    channel.close()

    link.remove()
    assert reader.wait_for_removal(POLL_BOUND + SLACK, cancel)


def test_card_already_present_is_returned_at_once(reader_for: ReaderFor, present: Present, cancel: CancelEvent) -> None:
    present(CountingCard())
    first = reader_for().wait_for_card(POLL_BOUND + SLACK, cancel)
    assert first is not None
    first.close()
    # A second reader (a restarted daemon) finds the card that is already there.
    second = reader_for().wait_for_card(0.0, cancel)
    assert second is not None
    assert second.transmit(SELECT) == b"\x90\x00"
    second.close()


def test_wait_for_removal_times_out_while_the_card_stays(
    reader_for: ReaderFor, present: Present, cancel: CancelEvent
) -> None:
    present(CountingCard())
    reader = reader_for()
    channel = reader.wait_for_card(POLL_BOUND + SLACK, cancel)
    assert channel is not None
    channel.close()
    assert reader.wait_for_removal(0.3, cancel) is False


def test_a_swap_between_two_calls_is_seen_through_the_event_counter(
    reader_for: ReaderFor, present: Present, cancel: CancelEvent
) -> None:
    """Card A leaves and card B arrives while nobody waits: the slot reads 'present' both times."""
    reader = reader_for()
    first = present(CountingCard(uid=b"\x0a"))
    channel = reader.wait_for_card(POLL_BOUND + SLACK, cancel)
    assert channel is not None
    assert channel.uid == b"\x0a"
    channel.close()

    first.remove()
    time.sleep(POLL_BOUND + 0.2)  # pcscd sees the slot empty...
    second_card = CountingCard(uid=b"\x0b")
    present(second_card)
    time.sleep(POLL_BOUND + 0.2)  # ...then full again, all between our two calls

    assert reader.wait_for_removal(0.0, cancel), "the swap must count as a removal"
    channel = reader.wait_for_card(0.0, cancel)
    assert channel is not None
    assert channel.uid == b"\x0b"
    channel.close()
    assert reader.missed_taps == 0


def test_a_tap_entirely_between_two_calls_is_counted_as_missed(
    reader_for: ReaderFor, present: Present, cancel: CancelEvent
) -> None:
    reader = reader_for()
    link = present(CountingCard())
    channel = reader.wait_for_card(POLL_BOUND + SLACK, cancel)
    assert channel is not None
    channel.close()
    link.remove()
    assert reader.wait_for_removal(POLL_BOUND + SLACK, cancel)

    quick = present(CountingCard())
    time.sleep(POLL_BOUND + 0.2)
    quick.remove()
    time.sleep(POLL_BOUND + 0.2)

    assert reader.wait_for_card(0.0, cancel) is None
    assert reader.missed_taps == 1


def test_a_pattern_over_two_slots_returns_the_card_where_it_is(
    pcscd: object, present: Present, cancel: CancelEvent
) -> None:
    reader = PcscReader("virtual pcd", name="both")
    try:
        present(CountingCard(), SLOT1)
        channel = reader.wait_for_card(POLL_BOUND + SLACK, cancel)
        assert channel is not None
        assert channel.reader_name == SLOT1
        channel.close()
    finally:
        reader.close()


def test_exclude_keeps_the_sam_slot_out(pcscd: object, present: Present, cancel: CancelEvent) -> None:
    reader = PcscReader("virtual pcd", exclude="00 01$", name="contactless-only")
    try:
        present(CountingCard(), SLOT1)
        time.sleep(POLL_BOUND + 0.2)
        assert reader.wait_for_card(0.2, cancel) is None
    finally:
        reader.close()


def test_sam_slot_gives_a_long_lived_channel_without_uid(
    reader_for: ReaderFor, present: Present, cancel: CancelEvent
) -> None:
    card = CountingCard()
    present(card, SLOT1)
    sam = reader_for(SLOT1, ReaderKind.SAM)
    channel = sam.wait_for_card(POLL_BOUND + SLACK, cancel)
    assert channel is not None
    assert channel.uid is None  # never asked of a SAM
    answers = [channel.transmit(GET_DATA) for _ in range(50)]
    assert answers[-1] == (50).to_bytes(2, "big") + b"\x90\x00"
    assert all(apdu == GET_DATA for apdu in card.received)
    channel.close()


def test_cancel_event_wakes_a_blocked_wait_at_once(reader_for: ReaderFor, cancel: CancelEvent) -> None:
    import threading

    reader = reader_for(poll_slice=30.0)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            reader.wait_for_card(60.0, cancel)
        except WaitCancelled as error:
            outcome.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    cancel.set()
    waiter.join(5.0)  # the slice is 30 s: only SCardCancel can end the wait this soon
    assert not waiter.is_alive()
    assert len(outcome) == 1


def test_close_from_another_thread_ends_the_wait(reader_for: ReaderFor) -> None:
    import threading

    reader = reader_for(poll_slice=30.0)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            reader.wait_for_card(60.0, threading.Event())
        except WaitCancelled as error:
            outcome.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    reader.close()
    waiter.join(5.0)
    assert not waiter.is_alive()
    assert len(outcome) == 1
