"""The NFC backend over nfcpy's udp driver, against the udp card side."""

from __future__ import annotations

import threading

import pytest

from reader.backends.base import CancelEvent, CardRemoved, TransmitTimeout, WaitCancelled
from reader.backends.nfc import NfcChannel, NfcReader, pcsc_atr
from sscard_sim.nfc_udp import NfcUdpCard
from tests.nfc.conftest import (
    ATR,
    INS_SLOW,
    PPSE_AID,
    SSSE_AID,
    ScriptedCard,
    echo,
    fci,
    pattern,
    read_binary,
    select,
)


def tap(reader: NfcReader) -> NfcChannel:
    channel = reader.wait_for_card(5.0, threading.Event())
    assert channel is not None
    return channel


def test_card_is_read_through_the_backend(udp_reader: NfcReader, udp_card: NfcUdpCard, card: ScriptedCard) -> None:
    channel = tap(udp_reader)
    assert channel.uid == udp_card.contactless.uid
    assert channel.atr == ATR  # PC/SC part 3 ATR rebuilt from the ATS: the card's own ATR
    assert channel.technology == "A"
    assert channel.transmit(select(PPSE_AID)) == fci(PPSE_AID) + b"\x90\x00"
    assert channel.transmit(select(SSSE_AID)) == fci(SSSE_AID) + b"\x90\x00"
    assert channel.transmit(bytes.fromhex("0084000008")) == bytes([1]) * 8 + b"\x90\x00"
    assert card.received == [select(PPSE_AID), select(SSSE_AID), bytes.fromhex("0084000008")]


def test_long_apdus_are_chained_both_ways(udp_reader: NfcReader, card: ScriptedCard) -> None:
    channel = tap(udp_reader)
    data = bytes(255 - i for i in range(255))
    assert channel.transmit(echo(data)) == data[::-1] + b"\x90\x00"
    assert channel.transmit(read_binary(256)) == pattern(256) + b"\x90\x00"
    assert card.received == [echo(data), read_binary(256)]


def test_no_card_wait_times_out(udp_reader: NfcReader, udp_card: NfcUdpCard) -> None:
    udp_card.remove()
    assert udp_reader.wait_for_card(0.3, threading.Event()) is None


@pytest.mark.parametrize("event_type", [CancelEvent, threading.Event])
def test_wait_is_cancelled_from_another_thread(
    udp_reader: NfcReader, udp_card: NfcUdpCard, event_type: type[threading.Event]
) -> None:
    udp_card.remove()
    cancel = event_type()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    try:
        with pytest.raises(WaitCancelled):
            udp_reader.wait_for_card(None, cancel)
    finally:
        timer.cancel()


def test_removal_is_seen_by_presence_checks(udp_reader: NfcReader, udp_card: NfcUdpCard, card: ScriptedCard) -> None:
    channel = tap(udp_reader)
    channel.transmit(select(SSSE_AID))
    channel.close()
    assert udp_reader.wait_for_removal(0.3, threading.Event()) is False  # still in the field
    udp_card.remove()
    assert udp_reader.wait_for_removal(2.0, threading.Event()) is True
    assert card.power_offs == 1
    udp_card.insert()
    second = tap(udp_reader)
    assert second.transmit(select(SSSE_AID)) == fci(SSSE_AID) + b"\x90\x00"
    assert card.power_ons == 2


def test_wait_for_removal_is_cancellable(udp_reader: NfcReader) -> None:
    tap(udp_reader)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(WaitCancelled):
        udp_reader.wait_for_removal(None, cancel)


def test_card_leaving_mid_exchange_is_card_removed(
    udp_reader: NfcReader, udp_card: NfcUdpCard, card: ScriptedCard
) -> None:
    channel = tap(udp_reader)
    card.hooks[INS_SLOW] = lambda apdu: udp_card.remove()  # the card leaves while it works
    with pytest.raises(CardRemoved):
        channel.transmit(bytes([0x80, INS_SLOW, 0x00, 0x00]), timeout=0.5)
    assert card.received == [bytes([0x80, INS_SLOW, 0x00, 0x00])]
    with pytest.raises(CardRemoved):
        channel.transmit(select(SSSE_AID))
    assert udp_reader.wait_for_removal(1.0, threading.Event()) is True
    assert card.power_offs == 1


def test_hung_card_in_the_field_is_a_transmit_timeout(
    udp_reader: NfcReader, udp_card: NfcUdpCard, card: ScriptedCard
) -> None:
    channel = tap(udp_reader)
    card.hooks[INS_SLOW] = lambda apdu: card.release.wait(10)
    with pytest.raises(TransmitTimeout):
        channel.transmit(bytes([0x80, INS_SLOW, 0x00, 0x00]), timeout=0.3)
    with pytest.raises(TransmitTimeout):  # the channel is spent: a late answer must not be misread
        channel.transmit(select(SSSE_AID))
    assert udp_reader.wait_for_removal(0.3, threading.Event()) is False  # still acknowledging
    card.release.set()
    udp_card.remove()
    assert udp_reader.wait_for_removal(2.0, threading.Event()) is True
    assert card.received == [bytes([0x80, INS_SLOW, 0x00, 0x00])]


def test_type_4b_through_the_backend(card: ScriptedCard) -> None:
    pupi = bytes.fromhex("CAFEBABE")
    with NfcUdpCard(card, technology="B", pupi=pupi) as bridge:
        reader = NfcReader(bridge.path, targets=("106B",))
        try:
            channel = tap(reader)
            assert channel.technology == "B"
            assert channel.uid == pupi
            assert channel.atr == pcsc_atr(bridge.contactless.atqb[5:12] + b"\x00")
            data = bytes(range(200))
            assert channel.transmit(echo(data)) == data[::-1] + b"\x90\x00"
            assert card.received == [echo(data)]
        finally:
            reader.close()
    assert card.power_offs == 1
