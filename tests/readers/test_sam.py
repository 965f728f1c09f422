"""The PSAM slot: a long-lived channel that is reopened after pcscd restarts or a pulled PSAM."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from reader.backends.base import CardRemoved, ReaderError, ReaderKind, ReaderUnavailable
from reader.backends.pcsc import PcscReader
from reader.backends.sam import SamNotPresent, SamSlot
from sscard_sim.inprocess import InProcessReader
from sscard_sim.pcscd import PcscdBench
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT1
from tests.readers.cards import GET_DATA, CountingCard

READ_TERMINAL_NUMBER = bytes.fromhex("00B0960006")
"""READ BINARY of the PSAM's file 0x16, its terminal number (cards.md §2.6)."""


def test_empty_slot_is_sam_not_present_then_the_psam_is_found() -> None:
    slot = SamSlot(InProcessReader("psam", ReaderKind.SAM), open_timeout=0.0)
    with pytest.raises(SamNotPresent):
        slot.transmit(GET_DATA)
    psam = CountingCard()
    assert isinstance(slot.reader, InProcessReader)
    slot.reader.insert(psam)
    assert slot.transmit(GET_DATA) == bytes.fromhex("00029000")
    assert slot.transmit(GET_DATA) == bytes.fromhex("00039000")
    assert slot.generation == 1  # one channel for every command
    assert psam.received[0] == READ_TERMINAL_NUMBER, "the PSAM's number is asked as the channel opens"
    assert slot.terminal_number is None, "a 2-byte answer is no terminal number: the purchase asks again"
    slot.close()


def test_pulled_psam_fails_once_and_a_new_one_is_opened() -> None:
    reader = InProcessReader("psam", ReaderKind.SAM)
    slot = SamSlot(reader, open_timeout=0.0)
    reader.insert(CountingCard())
    slot.transmit(GET_DATA)
    reader.remove()
    with pytest.raises(CardRemoved):
        slot.transmit(GET_DATA)
    reader.insert(CountingCard())
    assert slot.transmit(GET_DATA) == bytes.fromhex("00029000"), "after the new channel's READ BINARY 16"
    assert slot.generation == 2
    slot.close()


def test_psam_channel_survives_a_pcscd_restart(
    pcscd: PcscdBench, reader_for: Callable[..., PcscReader], present: Callable[..., VpcdLink]
) -> None:
    if not pcscd.owned:
        pytest.skip("pcscd was not started by the bench: not ours to restart")
    present(CountingCard(), SLOT1)
    slot = SamSlot(reader_for(SLOT1, ReaderKind.SAM), open_timeout=1.0)
    assert slot.transmit(GET_DATA) == bytes.fromhex("00029000")
    pcscd.restart()
    with pytest.raises((ReaderUnavailable, CardRemoved)):
        slot.transmit(GET_DATA)
    answer: bytes | None = None
    deadline = time.monotonic() + 5.0
    while answer is None and time.monotonic() < deadline:
        try:
            answer = slot.transmit(GET_DATA)
        except ReaderError:
            time.sleep(0.05)  # the PSAM's vpcd link redials pcscd, then pcscd polls it
    assert answer is not None and answer.endswith(b"\x90\x00")
    assert slot.generation == 2
