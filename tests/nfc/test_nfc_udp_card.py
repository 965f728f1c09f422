"""The udp card side read through nfcpy's ordinary reader API (ContactlessFrontend 'udp:...')."""

from __future__ import annotations

from collections.abc import Iterator

import nfc
import nfc.clf
import nfc.tag.tt4
import pytest

from sscard_sim.nfc_udp import NfcUdpCard
from tests.nfc.conftest import (
    SSSE_AID,
    ScriptedCard,
    echo,
    fci,
    pattern,
    read_binary,
    select,
)


@pytest.fixture
def clf(udp_card: NfcUdpCard) -> Iterator[nfc.ContactlessFrontend]:
    frontend = nfc.ContactlessFrontend(f"udp:localhost:{udp_card.port}")
    yield frontend
    frontend.close()


def connect(clf: nfc.ContactlessFrontend, target: str = "106A") -> nfc.tag.tt4.Type4Tag:
    tag = clf.connect(rdwr={"targets": [target], "on-connect": lambda tag: False, "iterations": 1})
    assert isinstance(tag, nfc.tag.tt4.Type4Tag)
    return tag


def test_nfcpy_connects_and_exchanges_apdus(
    clf: nfc.ContactlessFrontend, udp_card: NfcUdpCard, card: ScriptedCard
) -> None:
    tag = connect(clf)
    assert isinstance(tag, nfc.tag.tt4.Type4ATag)
    assert tag.identifier == udp_card.contactless.uid
    assert tag.transceive(select(SSSE_AID)) == fci(SSSE_AID) + b"\x90\x00"
    assert tag.send_apdu(0x00, 0x84, 0x00, 0x00, mrl=8) == bytes([1]) * 8
    assert tag.transceive(select(b"\xa0\x00\x00\x00\x00")) == b"\x6a\x82"
    assert card.received == [select(SSSE_AID), bytes.fromhex("0084000008"), select(b"\xa0\x00\x00\x00\x00")]
    assert card.power_ons == 1


def test_chaining_both_ways(clf: nfc.ContactlessFrontend, card: ScriptedCard) -> None:
    tag = connect(clf)
    data = bytes(range(255))
    command = echo(data)  # 260 bytes: two I-blocks at FSC 256
    assert tag.transceive(command) == data[::-1] + b"\x90\x00"
    assert tag.transceive(read_binary(256)) == pattern(256) + b"\x90\x00"  # 258 bytes: two I-blocks back
    assert card.received == [command, read_binary(256)]


def test_small_frame_size_chains_every_block(card: ScriptedCard) -> None:
    with NfcUdpCard(card, fsci=2) as bridge:  # FSC 32: 29 bytes per block
        frontend = nfc.ContactlessFrontend(bridge.path)
        try:
            tag = connect(frontend)
            data = bytes(range(100, 200))
            assert tag.transceive(echo(data)) == data[::-1] + b"\x90\x00"
            assert card.received == [echo(data)]
        finally:
            frontend.close()


def test_seven_byte_uid(card: ScriptedCard) -> None:
    uid = bytes.fromhex("04A1B2C3D4E5F6")
    with NfcUdpCard(card, uid=uid) as bridge:
        frontend = nfc.ContactlessFrontend(bridge.path)
        try:
            tag = connect(frontend)
            assert tag.identifier == uid
            assert tag.transceive(select(SSSE_AID)) == fci(SSSE_AID) + b"\x90\x00"
        finally:
            frontend.close()


def test_type_4b(card: ScriptedCard) -> None:
    pupi = bytes.fromhex("CAFEBABE")
    with NfcUdpCard(card, technology="B", pupi=pupi) as bridge:
        frontend = nfc.ContactlessFrontend(bridge.path)
        try:
            tag = connect(frontend, "106B")
            assert isinstance(tag, nfc.tag.tt4.Type4BTag)
            assert tag.identifier == pupi
            assert tag.transceive(echo(b"\x01\x02\x03")) == b"\x03\x02\x01\x90\x00"
        finally:
            frontend.close()


def test_presence_deselect_and_field_off(
    clf: nfc.ContactlessFrontend, udp_card: NfcUdpCard, card: ScriptedCard
) -> None:
    tag = connect(clf)
    assert tag.is_present
    assert clf.exchange(b"\xc2", 0.1) == b"\xc2"  # S(DESELECT) answered, card halted
    assert not tag.is_present
    clf.close()  # the reader sends RFOFF: the card loses power
    udp_card.remove()
    assert card.power_offs == 1


def test_removed_card_is_silent(clf: nfc.ContactlessFrontend, udp_card: NfcUdpCard, card: ScriptedCard) -> None:
    tag = connect(clf)
    udp_card.remove()
    assert not tag.is_present
    with pytest.raises(nfc.tag.tt4.Type4TagCommandError):
        tag.transceive(select(SSSE_AID), 0.05)
    assert card.received == []
    assert card.power_offs == 1
    udp_card.insert()
    tag = connect(clf)
    assert tag.transceive(select(SSSE_AID)) == fci(SSSE_AID) + b"\x90\x00"
    assert card.power_ons == 2
