"""SSSE: items by identifier, generation and region, and the read conversation over stored dumps."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols import BadEncoding, BadLength, TruncatedData, UnexpectedTag, ssse
from protocols.fci import parse_fci
from protocols.image import Recorder, replay
from protocols.ssse_auth import (
    AuthStep,
    CardNotGenuine,
    PsamCannotAuthenticate,
    SsseAuthenticationFailed,
    authenticate,
)
from protocols.ssse_read import read_ssse
from tests.protocols.proto_dumps import CARD_ID, PSAM_AID, dump, ef05_after_auth, ef05_before_auth, ef06


def test_card_identification_code_worked_example() -> None:
    raw = bytes.fromhex("0110" + CARD_ID)
    record = ssse.parse_item_record(raw, ssse.EF05)
    assert record.name == "card_identification_code"
    assert record.value == bytes.fromhex(CARD_ID)
    assert ssse.region_code(bytes.fromhex(CARD_ID)) == "330300"
    assert ssse.build_item_record(record) == raw


@pytest.mark.parametrize(
    ("name", "value", "wire"),
    [
        ("card_type", "3", "020133"),
        ("spec_version", "3.00", "0304332E3030"),
        ("issue_date", dt.date(2020, 1, 1), "050420200101"),
        ("card_number", "A12345678", "0709413132333435363738"),
        ("social_security_number", "11010119900101123X", "0812" + b"11010119900101123X".hex()),
        ("name", "张三", "091E" + "D5C5C8FD" + "00" * 26),
        ("name_extension", "", "4E14" + "00" * 20),
        ("sex", "1", "0A0131"),
        ("ethnicity", "01", "0B0101"),
        ("birthplace", "110101", "0C03110101"),
        ("birthplace", "5101", "0C035101FF"),
        ("birth_date", dt.date(1990, 1, 1), "0D0419900101"),
    ],
)
def test_items_round_trip(name: str, value: object, wire: str) -> None:
    raw = bytes.fromhex(wire)
    record = ssse.parse_item_record(raw)
    assert record.name == name and record.value == value
    assert ssse.build_item_record(record) == raw
    assert ssse.build_item_record(ssse.item(name, value)) == raw  # type: ignore[arg-type]


def test_read_record_by_identifier_matches_reference() -> None:
    assert ssse.read_item(0x08).to_bytes().hex().upper() == "00B2080014"
    assert ssse.read_item(0x4E, sfi=6).to_bytes().hex().upper() == "00B24E3016"
    assert ssse.read_item(0x05, sfi=5).to_bytes().hex().upper() == "00B2052806"
    assert ssse.select_ssse().to_bytes().hex().upper() == "00A404000F7378312E73682EC9E7BBE1B1A3D5CF"


def test_partial_card_number_read_with_le_0b() -> None:
    raw = bytes.fromhex("070C") + b"A12345678"
    record = ssse.parse_item_record(raw, ssse.EF05)
    assert record.partial and record.value == "A12345678" and record.declared_length == 12
    assert ssse.build_item_record(record) == raw


def test_item_errors() -> None:
    with pytest.raises(UnexpectedTag):
        ssse.parse_item_record(bytes.fromhex("0812") + b"1" * 18, ssse.EF05)
    with pytest.raises(TruncatedData) as cut:
        ssse.parse_item_record(bytes.fromhex("0304332E30"))
    assert (cut.value.field, cut.value.offset) == ("spec_version", 5)
    with pytest.raises(BadEncoding):
        ssse.parse_item_record(bytes.fromhex("091E") + b"\xc9" + bytes(29))
    with pytest.raises(BadEncoding):
        ssse.parse_item_record(bytes.fromhex("0C031A0101"))
    with pytest.raises(BadLength):
        ssse.parse_item_record(bytes.fromhex("0D03199001"))


def test_generation_and_algorithm() -> None:
    assert ssse.generation_from_version("1.00") is ssse.Generation.FIRST
    assert ssse.generation_from_version("2.00") is ssse.Generation.SECOND
    assert ssse.generation_from_version("3.00").needs_psam
    assert ssse.algorithm_id(parse_fci(bytes.fromhex("6F0B840101A5069F0C03860103"))) == 3
    assert ssse.algorithm_id(parse_fci(bytes.fromhex("6F03840101"))) == ssse.DEFAULT_ALGORITHM_ID


def test_second_generation_card_needs_no_psam() -> None:
    card = replay(dump(*ef05_before_auth("2.00"), *ef05_after_auth(), *ef06()))
    image = read_ssse(card)
    assert image.generation is ssse.Generation.SECOND
    assert image.algorithm_id == 3
    assert image.region_code == "330300"
    assert image.card_number == "A12345678"
    assert image.social_security_number == "11010119900101123X"
    assert image.full_name == "张三" and image.name_extension is None
    assert image.birth_date == dt.date(1990, 1, 1)
    assert image.ef06_read and not image.authenticated


def test_third_generation_without_psam_reads_only_public_items() -> None:
    image = read_ssse(replay(dump(*ef05_before_auth("3.00"))))
    assert image.card_number == "A12345678"
    assert image.name is None and not image.ef06_read


def _auth_pairs(verify_sw: str = "9000") -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    factor, psam_random = "1111111111111111", "2222222222222222"
    answer, card_challenge, cryptogram = "33" * 16, "44" * 16, "55" * 16
    card = [
        ("0084000008", factor + "9000"),
        ("0088000010" + factor + psam_random + "10", answer + "9000"),
        ("0084000010", card_challenge + "9000"),
        ("0082000A10" + cryptogram, "9000"),
    ]
    psam = [
        ("00A4040006" + PSAM_AID, "9000"),
        ("0084000008", psam_random + "9000"),
        ("80F0030030" + CARD_ID + factor + psam_random + answer, verify_sw),
        ("80F2030A20" + CARD_ID + card_challenge + "10", cryptogram + "9000"),
    ]
    return card, psam


def test_third_generation_with_psam_authenticates_then_reads_ef06() -> None:
    card_auth, psam_pairs = _auth_pairs()
    card = Recorder(replay(dump(*ef05_before_auth("3.00"), *card_auth, *ef05_after_auth(), *ef06("6A83"))))
    image = read_ssse(card, replay(dump(*psam_pairs)))
    assert image.authenticated and image.ef06_read
    assert image.name == "张三"
    commands = [e.command.hex().upper() for e in card.dump().exchanges]
    assert commands.index("0082000A10" + "55" * 16) < commands.index("00A4020002EF06")


def test_psam_rejecting_the_card_stops_authentication() -> None:
    card_auth, psam_pairs = _auth_pairs(verify_sw="6300")
    card = replay(dump(*ef05_before_auth("3.00"), *card_auth))
    with pytest.raises(SsseAuthenticationFailed) as info:
        read_ssse(card, replay(dump(*psam_pairs)))
    assert info.value.step is AuthStep.PSAM_VERIFY_CARD
    assert info.value.cause.sw == 0x6300  # type: ignore[union-attr]


@pytest.mark.parametrize("sw", ["6F00", "6581", "6985"])
def test_a_psam_failing_before_it_sees_the_card_does_not_refuse_the_card(sw: str) -> None:
    """SELECT of the PSAM's key application carries nothing of the card: its failure is the PSAM's."""
    card_auth, psam_pairs = _auth_pairs()
    psam_pairs[0] = (psam_pairs[0][0], sw)
    with pytest.raises(PsamCannotAuthenticate) as info:
        authenticate(replay(dump(*card_auth)), replay(dump(*psam_pairs)), bytes.fromhex(CARD_ID), 0x03)
    assert info.value.step is AuthStep.PSAM_SELECT and info.value.sw == int(sw, 16)


def test_a_psam_failing_after_the_card_answered_still_counts_against_the_card() -> None:
    """6F00 to VERIFY CARD is not a status by which a PSAM says it cannot: the check fails closed."""
    card_auth, psam_pairs = _auth_pairs(verify_sw="6F00")
    with pytest.raises(CardNotGenuine) as info:
        authenticate(replay(dump(*card_auth)), replay(dump(*psam_pairs)), bytes.fromhex(CARD_ID), 0x03)
    assert info.value.step is AuthStep.PSAM_VERIFY_CARD
