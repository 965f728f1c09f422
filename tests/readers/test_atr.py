"""ATR classification (PC/SC part 3) and the UID pseudo-APDU."""

from __future__ import annotations

from functools import reduce
from operator import xor

import pytest

from reader.backends.atr import GET_UID, Interface, Technology, classify_atr, read_uid


def with_tck(body: str) -> bytes:
    """A contactless ATR from TS..historical bytes, with its TCK computed (XOR of T0..TCK = 0)."""
    raw = bytes.fromhex(body)
    return raw + bytes([reduce(xor, raw[1:], 0)])


def storage_atr(standard: int, name: int) -> bytes:
    historical = bytes.fromhex("804F0CA000000306") + bytes([standard]) + name.to_bytes(2, "big") + bytes(4)
    return with_tck("3B8F8001" + historical.hex())


def test_type_b_style_processor_card_is_contactless_iso14443_4() -> None:
    info = classify_atr(bytes.fromhex("3B8880010000000000718100F9"))
    assert info.interface is Interface.CONTACTLESS
    assert info.technology is Technology.ISO14443_4
    assert info.historical == bytes.fromhex("0000000000718100")
    assert info.checksum_ok is True
    assert info.runs_apdus


def test_ats_historical_bytes_of_any_length_are_iso14443_4() -> None:
    for historical in ("", "80", "C1052F2F01BCD6", "4A434F5033315632333201"):
        atr = with_tck(f"3B8{len(historical) // 2:X}8001{historical}")
        info = classify_atr(atr)
        assert (info.interface, info.technology) == (Interface.CONTACTLESS, Technology.ISO14443_4), historical


@pytest.mark.parametrize(
    ("standard", "name", "text"),
    [
        (0x03, 0x0001, "MIFARE Classic 1K"),
        (0x03, 0x0002, "MIFARE Classic 4K"),
        (0x03, 0x0003, "MIFARE Ultralight"),
        (0x11, 0x003B, "FeliCa"),
    ],
)
def test_storage_cards_carry_standard_and_name(standard: int, name: int, text: str) -> None:
    info = classify_atr(storage_atr(standard, name))
    assert info.technology is Technology.STORAGE
    assert info.contactless
    assert not info.runs_apdus
    assert (info.standard, info.card_name) == (standard, name)
    assert info.card_name_text == text


def test_known_mifare_classic_atr_matches_the_published_bytes() -> None:
    info = classify_atr(bytes.fromhex("3B8F8001804F0CA000000306030001000000006A"))
    assert info.card_name_text == "MIFARE Classic 1K"
    assert info.standard_text == "ISO 14443 A part 3"
    assert info.checksum_ok is True


def test_unknown_storage_name_is_reported_by_number() -> None:
    info = classify_atr(storage_atr(0x0B, 0x0777))
    assert info.technology is Technology.STORAGE
    assert info.card_name_text == "card name 0777"
    assert info.standard_text == "ISO 15693 part 3"


def test_pcsc_rid_of_wrong_length_is_not_a_storage_card() -> None:
    historical = "804F0CA000000306030001000000"  # 14 bytes: one short of the storage layout
    assert classify_atr(with_tck("3B8E8001" + historical)).technology is Technology.ISO14443_4


def test_b_prime_signature() -> None:
    assert classify_atr(with_tck("3B8780015A0A0102030405")).technology is Technology.B_PRIME
    assert classify_atr(with_tck("3B888001805A0A0102030405")).technology is Technology.B_PRIME


@pytest.mark.parametrize(
    "atr",
    [
        "3B6800000073C84000009000",  # T=0 contact card without TCK
        "3B9F95801FC78031E073FE211B63E208A6830F900087",  # SIM-style: TA1, T=0 then T=15
        "3BF81300008131FE454A434F5076323431B7",  # JCOP-style, interface bytes before T=1
    ],
)
def test_contact_cards(atr: str) -> None:
    info = classify_atr(bytes.fromhex(atr))
    assert info.interface is Interface.CONTACT
    assert info.technology is Technology.ISO7816


def test_contact_protocols_are_read_from_td_bytes() -> None:
    assert classify_atr(bytes.fromhex("3B6800000073C84000009000")).protocols == (0,)
    assert 1 in classify_atr(bytes.fromhex("3BF81300008131FE454A434F5076323431B7")).protocols


def test_bad_checksum_is_reported_not_hidden() -> None:
    atr = bytearray(bytes.fromhex("3B8880010000000000718100F9"))
    atr[-1] ^= 0xFF
    info = classify_atr(bytes(atr))
    assert info.contactless
    assert info.checksum_ok is False


@pytest.mark.parametrize("atr", ["", "3B", "5511", "3B88800100", "3B8880010000000000718100", "3BF8130000"])
def test_malformed_or_truncated_atr_is_unknown(atr: str) -> None:
    info = classify_atr(bytes.fromhex(atr))
    assert info.technology is Technology.UNKNOWN
    assert info.interface is Interface.UNKNOWN


def test_read_uid_returns_the_data_of_a_successful_answer() -> None:
    seen: list[bytes] = []

    def reader(apdu: bytes) -> bytes:
        seen.append(apdu)
        return bytes.fromhex("04112233445566") + b"\x90\x00"

    assert read_uid(reader) == bytes.fromhex("04112233445566")
    assert seen == [GET_UID]


def test_read_uid_follows_a_wrong_length_answer() -> None:
    answers = iter([bytes.fromhex("6C04"), bytes.fromhex("A1B2C3D4") + b"\x90\x00"])
    seen: list[bytes] = []

    def reader(apdu: bytes) -> bytes:
        seen.append(apdu)
        return next(answers)

    assert read_uid(reader) == bytes.fromhex("A1B2C3D4")
    assert seen == [GET_UID, bytes.fromhex("FFCA000004")]


@pytest.mark.parametrize("status", ["6A81", "6D00", "6E00", "9000"])
def test_read_uid_is_none_when_the_reader_does_not_answer_it(status: str) -> None:
    assert read_uid(lambda apdu: bytes.fromhex(status)) is None
