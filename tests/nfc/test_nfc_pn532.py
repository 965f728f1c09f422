"""The PN532 simulator on a pty: raw frames, nfcpy's tty driver through pyserial, and the backend."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import nfc
import nfc.tag.tt4
import pytest
import serial

from reader.backends.base import CardRemoved, ReaderUnavailable, TransmitTimeout
from reader.backends.nfc import NfcChannel, NfcReader, pcsc_atr
from sscard_sim.pn532 import Pn532Simulator
from tests.nfc.conftest import (
    ATR,
    HISTORICAL,
    INS_SLOW,
    SSSE_AID,
    ScriptedCard,
    echo,
    fci,
    pattern,
    read_binary,
    select,
)

ACK = bytes.fromhex("0000FF00FF00")


def host_frame(payload: bytes) -> bytes:
    """A host command frame (normal form, TFI D4 included in `payload`)."""
    return (
        bytes([0x00, 0x00, 0xFF, len(payload), (-len(payload)) & 0xFF])
        + payload
        + bytes([(-sum(payload)) & 0xFF, 0x00])
    )


def chip_frame(payload: bytes) -> bytes:
    """A chip response frame, normal or extended."""
    size = len(payload)
    if size < 0xFF:
        head = bytes([0x00, 0x00, 0xFF, size, (-size) & 0xFF])
    else:
        head = bytes([0x00, 0x00, 0xFF, 0xFF, 0xFF, size >> 8, size & 0xFF, (-((size >> 8) + (size & 0xFF))) & 0xFF])
    return head + payload + bytes([(-sum(payload)) & 0xFF, 0x00])


@pytest.fixture
def host(pn532: Pn532Simulator) -> Iterator[serial.Serial]:
    port = serial.Serial(pn532.device, 115200, timeout=1.0)
    yield port
    port.close()


def command(host: serial.Serial, payload: bytes, answer_size: int) -> bytes:
    host.write(host_frame(payload))
    assert host.read(6) == ACK
    return bytes(host.read(answer_size))


def tap(reader: NfcReader) -> NfcChannel:
    channel = reader.wait_for_card(5.0, threading.Event())
    assert channel is not None
    return channel


# -- raw frames -------------------------------------------------------------------------


def test_firmware_version_and_resend_on_nak(host: serial.Serial) -> None:
    host.write(bytes(10) + host_frame(bytes.fromhex("D402")))  # with nfcpy's wake-up preamble
    assert host.read(6) == ACK
    firmware = bytes.fromhex("0000FF06FAD50332010607E800")
    assert host.read(len(firmware)) == firmware
    host.write(bytes.fromhex("0000FFFF0000"))  # NAK: send that again
    assert host.read(len(firmware)) == firmware


def test_line_test_echoes_an_extended_frame(host: serial.Serial) -> None:
    data = b"\x00" + bytes(i & 0xFF for i in range(262))
    payload = bytes([0xD4, 0x00]) + data
    size = len(payload)
    frame = bytes([0, 0, 0xFF, 0xFF, 0xFF, size >> 8, size & 0xFF, (-((size >> 8) + (size & 0xFF))) & 0xFF])
    host.write(frame + payload + bytes([(-sum(payload)) & 0xFF, 0x00]))
    assert host.read(6) == ACK
    expected = chip_frame(bytes([0xD5, 0x01]) + data)
    assert host.read(len(expected)) == expected


def test_unknown_command_gets_the_syntax_error_frame(host: serial.Serial) -> None:
    assert command(host, bytes.fromhex("D48C"), 8) == bytes.fromhex("0000FF01FF7F8100")


def test_firmware_iso_dep_with_in_data_exchange(host: serial.Serial, pn532: Pn532Simulator, card: ScriptedCard) -> None:
    ats = bytes([5 + len(HISTORICAL), 0x78, 0x80, 0x70, 0x02]) + HISTORICAL  # FSCI 8, FWI 7, CID
    listed = bytes([0xD5, 0x4B, 0x01, 0x01, 0x00, 0x04, 0x20, 0x04]) + pn532.contactless.uid + ats
    expected = chip_frame(listed)
    assert command(host, bytes.fromhex("D44A0100"), len(expected)) == expected  # automatic RATS: ATS included

    answer = chip_frame(bytes([0xD5, 0x41, 0x00]) + fci(SSSE_AID) + b"\x90\x00")
    assert command(host, bytes([0xD4, 0x40, 0x01]) + select(SSSE_AID), len(answer)) == answer

    data = bytes(range(255))
    apdu = echo(data)  # 260 bytes, sent by the host in two frames with the MI bit
    first = command(host, bytes([0xD4, 0x40, 0x41]) + apdu[:200], 10)
    assert first == chip_frame(bytes([0xD5, 0x41, 0x00]))
    answer = chip_frame(bytes([0xD5, 0x41, 0x00]) + data[::-1] + b"\x90\x00")
    assert command(host, bytes([0xD4, 0x40, 0x01]) + apdu[200:], len(answer)) == answer

    released = chip_frame(bytes([0xD5, 0x53, 0x00]))
    assert command(host, bytes.fromhex("D45201"), len(released)) == released
    assert card.received == [select(SSSE_AID), apdu]
    assert pn532.contactless.state == "halt"  # InRelease deselected it


def test_empty_field_lists_no_target(host: serial.Serial, pn532: Pn532Simulator) -> None:
    pn532.remove()
    none = chip_frame(bytes.fromhex("D54B00"))
    assert command(host, bytes.fromhex("D44A0100"), len(none)) == none
    fifo = chip_frame(bytes.fromhex("D50726"))  # the REQA is still in CIU_FIFOData
    assert command(host, bytes.fromhex("D4066339"), len(fifo)) == fifo


# -- nfcpy and the backend --------------------------------------------------------------


def test_backend_reads_the_card_over_the_pty(
    pn532_reader: NfcReader, pn532: Pn532Simulator, card: ScriptedCard
) -> None:
    channel = tap(pn532_reader)
    assert pn532_reader.device is not None and "PN532v1.6" in pn532_reader.device
    assert channel.uid == pn532.contactless.uid
    assert channel.atr == ATR
    assert channel.transmit(select(SSSE_AID)) == fci(SSSE_AID) + b"\x90\x00"
    data = bytes(range(1, 256))
    assert channel.transmit(echo(data)) == data[::-1] + b"\x90\x00"
    assert channel.transmit(read_binary(256)) == pattern(256) + b"\x90\x00"
    assert card.received == [select(SSSE_AID), echo(data), read_binary(256)]
    # nfcpy's init and its own ISO-DEP: line test, baud rate switch, InCommunicateThru.
    assert {0x02, 0x14, 0x10, 0x00, 0x12, 0x4A, 0x42} <= set(pn532.commands)
    assert 0x40 not in pn532.commands


def test_removal_and_a_second_tap(pn532_reader: NfcReader, pn532: Pn532Simulator, card: ScriptedCard) -> None:
    tap(pn532_reader)
    assert pn532_reader.wait_for_removal(0.3, threading.Event()) is False
    pn532.remove()
    assert pn532_reader.wait_for_removal(2.0, threading.Event()) is True
    assert pn532_reader.wait_for_card(0.3, threading.Event()) is None
    pn532.insert()
    channel = tap(pn532_reader)
    assert channel.transmit(bytes.fromhex("0084000008")) == bytes([1]) * 8 + b"\x90\x00"
    assert (card.power_ons, card.power_offs) == (2, 1)


def test_card_leaving_mid_exchange_over_the_pty(
    pn532_reader: NfcReader, pn532: Pn532Simulator, card: ScriptedCard
) -> None:
    channel = tap(pn532_reader)
    card.hooks[INS_SLOW] = lambda apdu: pn532.remove()
    with pytest.raises(CardRemoved):
        channel.transmit(bytes([0x80, INS_SLOW, 0x00, 0x00]), timeout=0.5)
    assert pn532_reader.wait_for_removal(1.0, threading.Event()) is True


def test_hung_card_over_the_pty_is_a_transmit_timeout(
    pn532_reader: NfcReader, pn532: Pn532Simulator, card: ScriptedCard
) -> None:
    channel = tap(pn532_reader)
    card.hooks[INS_SLOW] = lambda apdu: card.release.wait(10)
    with pytest.raises(TransmitTimeout):
        channel.transmit(bytes([0x80, INS_SLOW, 0x00, 0x00]), timeout=0.3)
    assert pn532_reader.wait_for_removal(0.2, threading.Event()) is False
    card.release.set()
    pn532.remove()
    assert pn532_reader.wait_for_removal(2.0, threading.Event()) is True


def test_type_4b_over_the_pty(card: ScriptedCard) -> None:
    pupi = bytes.fromhex("0BADF00D")
    with Pn532Simulator(card, technology="B", pupi=pupi) as simulator:
        reader = NfcReader(simulator.path, targets=("106B",))
        try:
            channel = tap(reader)
            assert (channel.technology, channel.uid) == ("B", pupi)
            assert channel.atr == pcsc_atr(simulator.contactless.atqb[5:12] + b"\x00")
            assert channel.transmit(echo(b"\xaa\xbb")) == b"\xbb\xaa\x90\x00"
        finally:
            reader.close()
        assert card.received == [echo(b"\xaa\xbb")]


@pytest.mark.skipif(os.geteuid() != 0, reason="a link directly under /dev needs root")
def test_nfcpy_path_through_a_link_under_dev(card: ScriptedCard) -> None:
    link = Path("/dev") / f"ttySscardPn532x{os.getpid()}"
    with Pn532Simulator(card, link=link) as simulator:
        assert simulator.path == f"tty:{link.name}:pn532"
        frontend = nfc.ContactlessFrontend(simulator.path)
        try:
            tag = frontend.connect(rdwr={"targets": ["106A"], "on-connect": lambda tag: False, "iterations": 1})
            assert isinstance(tag, nfc.tag.tt4.Type4ATag)
            assert tag.transceive(select(SSSE_AID)) == fci(SSSE_AID) + b"\x90\x00"
        finally:
            frontend.close()
    assert not link.exists()
    assert 0x16 in simulator.commands  # nfcpy powers the chip down on close


def test_silent_serial_port_is_reader_unavailable() -> None:
    master, slave = os.openpty()
    try:
        reader = NfcReader(f"tty:{os.ttyname(slave)}:pn532")
        with pytest.raises(ReaderUnavailable, match="no reader answered"):
            reader.open()
    finally:
        os.close(master)
        os.close(slave)
