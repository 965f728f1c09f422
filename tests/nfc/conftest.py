"""Fixtures for the NFC tests: a small scripted card, the udp card side and the PN532 simulator.

The card here is deliberately tiny and deterministic (the full virtual card lives elsewhere):
it answers SELECT with an FCI, GET CHALLENGE from a counter, an echo command that reverses its
data, and READ BINARY with a counting pattern, and it records every APDU it received, so that
tests assert exact bytes in both directions, chained or not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import reduce
from operator import xor

import pytest

from reader.backends.nfc import NfcReader
from sscard_sim.nfc_udp import NfcUdpCard
from sscard_sim.pn532 import Pn532Simulator

HISTORICAL = bytes.fromhex("8073C82113660106115901")
ATR = bytes([0x3B, 0x80 | len(HISTORICAL), 0x80, 0x01]) + HISTORICAL
ATR += bytes([reduce(xor, ATR[1:], 0)])  # PC/SC part 3 form, as a reader would build it

SSSE_AID = bytes.fromhex("7378312E73682EC9E7BBE1B1A3D5CF")
PPSE_AID = b"2PAY.SYS.DDF01"
INS_ECHO = 0xEE
INS_SLOW = 0x5E


def fci(aid: bytes) -> bytes:
    """A minimal FCI: DF name and a proprietary template with one tag."""
    proprietary = bytes.fromhex("A503880101")
    body = bytes([0x84, len(aid)]) + aid + proprietary
    return bytes([0x6F, len(body)]) + body


def select(aid: bytes) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00"


def echo(data: bytes) -> bytes:
    return bytes([0x80, INS_ECHO, 0x00, 0x00, len(data)]) + data


def read_binary(length: int) -> bytes:
    return bytes([0x00, 0xB0, 0x00, 0x00, length & 0xFF])


def pattern(length: int) -> bytes:
    return bytes(i & 0xFF for i in range(length))


class ScriptedCard:
    """A CardSide that answers a handful of commands deterministically and records everything."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.power_ons = 0
        self.power_offs = 0
        self.hooks: dict[int, Callable[[bytes], object]] = {}
        self.release = threading.Event()  # set at teardown: frees a card told to hang
        self._challenge = 0

    def power_on(self) -> bytes:
        self.power_ons += 1
        self._challenge = 0
        return ATR

    def power_off(self) -> None:
        self.power_offs += 1

    def atr(self) -> bytes:
        return ATR

    def transmit(self, apdu: bytes) -> bytes:
        self.received.append(apdu)
        hook = self.hooks.get(apdu[1])
        if hook is not None:
            hook(apdu)
        ins = apdu[1]
        data = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if ins == 0xA4 and apdu[2] == 0x04:
            return fci(data) + b"\x90\x00" if data in (SSSE_AID, PPSE_AID) else b"\x6a\x82"
        if ins == 0x84:
            self._challenge += 1
            return bytes([self._challenge]) * 8 + b"\x90\x00"
        if ins == INS_ECHO:
            return data[::-1] + b"\x90\x00"
        if ins == 0xB0:
            return pattern(apdu[4] or 256) + b"\x90\x00"
        if ins == INS_SLOW:
            return b"\x90\x00"
        return b"\x6d\x00"


@pytest.fixture
def card() -> Iterator[ScriptedCard]:
    scripted = ScriptedCard()
    yield scripted
    scripted.release.set()


@pytest.fixture
def udp_card(card: ScriptedCard) -> Iterator[NfcUdpCard]:
    bridge = NfcUdpCard(card).start()
    yield bridge
    card.release.set()
    bridge.stop()


@pytest.fixture
def udp_reader(udp_card: NfcUdpCard) -> Iterator[NfcReader]:
    reader = NfcReader(udp_card.path, targets=("106A",))
    yield reader
    reader.close()


@pytest.fixture
def pn532(card: ScriptedCard) -> Iterator[Pn532Simulator]:
    simulator = Pn532Simulator(card).start()
    yield simulator
    card.release.set()
    simulator.stop()


@pytest.fixture
def pn532_reader(pn532: Pn532Simulator) -> Iterator[NfcReader]:
    reader = NfcReader(pn532.path, targets=("106A",))
    yield reader
    reader.close()
