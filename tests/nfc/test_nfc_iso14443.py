"""The card's RF protocol frame by frame: ISO/IEC 14443-3 activation and 14443-4 blocks."""

from __future__ import annotations

from functools import reduce
from operator import xor

import pytest

from sscard_sim.nfc_udp import ApduRequest, ContactlessCard, historical_bytes
from tests.nfc.conftest import ATR, HISTORICAL

UID7 = bytes.fromhex("04112233445566")


def activated(card: ContactlessCard, rats: bytes = b"\xe0\x80") -> bytes:
    """Power the card, run REQA, anticollision and SELECT on every level, then RATS; the ATS."""
    card.field_on(ATR)
    assert card.receive(b"\x26") == card.atqa
    for level in (0x93, 0x95, 0x97):
        cl = card.receive(bytes([level, 0x20]))
        assert isinstance(cl, bytes)
        sak = card.receive(bytes([level, 0x70]) + cl)
        assert isinstance(sak, bytes)
        if not sak[0] & 0x04:
            break
    ats = card.receive(rats)
    assert isinstance(ats, bytes)
    return ats


def test_historical_bytes_of_an_atr() -> None:
    assert historical_bytes(ATR) == HISTORICAL
    storage = bytes.fromhex("3B8F8001 804F0CA000000306030001000000 00 6A")
    assert historical_bytes(storage) == bytes.fromhex("804F0CA00000030603000100000000")
    assert historical_bytes(bytes.fromhex("3B02 1234")) == bytes.fromhex("1234")
    assert historical_bytes(bytes.fromhex("3B")) == b""


def test_type_a_activation_bytes() -> None:
    card = ContactlessCard("A", uid=bytes.fromhex("08A1B2C3"))
    card.field_on(ATR)
    assert card.receive(b"\x26") == bytes.fromhex("0400")
    assert card.receive(bytes.fromhex("9320")) == bytes.fromhex("08A1B2C3") + bytes([0x08 ^ 0xA1 ^ 0xB2 ^ 0xC3])
    assert card.receive(bytes.fromhex("937008A1B2C3D8")) == b"\x20"
    assert card.receive(bytes.fromhex("E080")) == bytes([5 + len(HISTORICAL), 0x78, 0x80, 0x70, 0x02]) + HISTORICAL
    assert card.state == "protocol"


def test_double_size_uid_cascades() -> None:
    card = ContactlessCard("A", uid=UID7)
    card.field_on(ATR)
    assert card.receive(b"\x52") == bytes.fromhex("4400")
    level1 = bytes.fromhex("88041122")
    assert card.receive(bytes.fromhex("9320")) == level1 + bytes([reduce(xor, level1)])
    assert card.receive(bytes.fromhex("9370") + level1 + bytes([reduce(xor, level1)])) == b"\x04"
    level2 = bytes.fromhex("33445566")
    assert card.receive(bytes.fromhex("9520")) == level2 + bytes([reduce(xor, level2)])
    assert card.receive(bytes.fromhex("9570") + level2 + bytes([reduce(xor, level2)])) == b"\x20"


def test_halted_card_wakes_only_on_wupa() -> None:
    card = ContactlessCard("A")
    card.field_on(ATR)
    card.receive(b"\x26")
    cl = card.receive(bytes.fromhex("9320"))
    assert isinstance(cl, bytes)
    card.receive(bytes.fromhex("9370") + cl)
    assert card.receive(bytes.fromhex("5000")) is None
    assert card.state == "halt"
    assert card.receive(b"\x26") is None
    assert card.receive(b"\x52") == card.atqa


def test_unpowered_card_is_silent() -> None:
    card = ContactlessCard("A")
    assert card.receive(b"\x26") is None
    activated(card)
    card.field_off()
    assert card.receive(bytes.fromhex("02") + b"\x00\xa4\x04\x00") is None


def test_i_block_numbering_and_retransmission() -> None:
    card = ContactlessCard("A")
    activated(card)
    request = card.receive(bytes.fromhex("0200A40400"))
    assert request == ApduRequest(bytes.fromhex("00A40400"))
    assert card.complete(b"\x90\x00") == bytes.fromhex("029000")
    # The reader lost that answer and asks again with R(NAK) carrying the same block number.
    assert card.receive(bytes.fromhex("B2")) == bytes.fromhex("029000")
    # Presence check: R(NAK) with the next block number is acknowledged.
    assert card.receive(bytes.fromhex("B3")) == bytes.fromhex("A2")
    assert card.receive(bytes.fromhex("0300B0000004")) == ApduRequest(bytes.fromhex("00B0000004"))
    assert card.complete(bytes.fromhex("010203049000")) == bytes.fromhex("03010203049000")


def test_busy_card_acknowledges_presence_and_ignores_repeats() -> None:
    card = ContactlessCard("A")
    activated(card)
    assert isinstance(card.receive(bytes.fromhex("02800000")), ApduRequest)
    assert card.busy
    assert card.receive(bytes.fromhex("B2")) == bytes.fromhex("A3")
    assert card.receive(bytes.fromhex("02800000")) is None
    assert card.complete(b"\x90\x00") == bytes.fromhex("029000")
    assert not card.busy


def test_command_and_response_chaining_with_small_frames() -> None:
    card = ContactlessCard("A", fsci=0)  # FSC 16
    ats = activated(card, rats=b"\xe0\x00")  # FSD 16: 13 bytes of INF per block
    assert ats[1] & 0x0F == 0
    command = bytes(range(30))
    assert card.receive(bytes([0x12]) + command[:13]) == bytes.fromhex("A2")
    assert card.receive(bytes([0x13]) + command[13:26]) == bytes.fromhex("A3")
    assert card.receive(bytes([0x02]) + command[26:]) == ApduRequest(command)
    response = bytes(range(100, 130))
    assert card.complete(response) == bytes([0x12]) + response[:13]
    assert card.receive(bytes.fromhex("A3")) == bytes([0x13]) + response[13:26]
    # Lost block: R(ACK) with the current number repeats it.
    assert card.receive(bytes.fromhex("A3")) == bytes([0x13]) + response[13:26]
    assert card.receive(bytes.fromhex("A2")) == bytes([0x02]) + response[26:]


def test_cid_addressing_and_deselect() -> None:
    card = ContactlessCard("A")
    activated(card, rats=b"\xe0\x81")  # CID 1
    assert card.receive(bytes.fromhex("0200A40400")) is None  # no CID: not for this card
    assert card.receive(bytes.fromhex("0A0200A40400")) is None  # CID 2: another card
    assert card.receive(bytes.fromhex("0A0100A40400")) == ApduRequest(bytes.fromhex("00A40400"))
    assert card.complete(b"\x90\x00") == bytes.fromhex("0A019000")
    assert card.receive(bytes.fromhex("CA01")) == bytes.fromhex("CA01")
    assert card.state == "halt"
    assert card.receive(bytes.fromhex("BB01")) is None


def test_pps_right_after_rats() -> None:
    card = ContactlessCard("A")
    activated(card)
    assert card.receive(bytes.fromhex("D01100")) == bytes.fromhex("D0")


def test_type_b_activation_bytes() -> None:
    card = ContactlessCard("B", pupi=bytes.fromhex("11223344"), fsci=8, fwi=7)
    card.field_on(ATR)
    atqb = bytes.fromhex("50 11223344 00000000 00 81 71")
    assert card.receive(bytes.fromhex("050000")) == atqb
    assert card.receive(bytes.fromhex("1D 11223344 00 08 01 00")) == b"\x00"
    assert card.receive(bytes.fromhex("0200B0000002")) == ApduRequest(bytes.fromhex("00B0000002"))
    assert card.complete(bytes.fromhex("AABB9000")) == bytes.fromhex("02AABB9000")
    assert card.receive(bytes.fromhex("C2")) == bytes.fromhex("C2")
    assert card.receive(bytes.fromhex("050000")) is None  # halted: REQB does not wake it
    assert card.receive(bytes.fromhex("050008")) == atqb  # WUPB does


@pytest.mark.parametrize("uid", [b"", bytes(5), bytes(11)])
def test_uid_lengths_are_checked(uid: bytes) -> None:
    with pytest.raises(ValueError, match="4, 7 or 10"):
        ContactlessCard("A", uid=uid)
