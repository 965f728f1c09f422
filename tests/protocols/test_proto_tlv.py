"""BER-TLV and FCI templates: the reference's worked FCI, PPSE answers, and precise errors."""

from __future__ import annotations

import pytest

from protocols import BadLength, TrailingData, TruncatedData, UnexpectedTag
from protocols.fci import DirectoryEntry, Fci, parse_fci
from protocols.tlv import Tlv, build_tlvs, find_path, parse_tlv, parse_tlvs

CITY_UNION_FCI = "6F2E8409A00000000386980701A5219F0C1E847531000000000000003100310000002091508720151010206510100000"


def test_multi_byte_tags_and_long_lengths_round_trip() -> None:
    items = (Tlv(0x9F0C, bytes(30)), Tlv(0xBF0C, bytes(200)), Tlv(0x5F2D, b"zh"), Tlv(0x9F8101, b"x"))
    raw = build_tlvs(items)
    assert raw[:3] == bytes.fromhex("9F0C1E")
    assert bytes.fromhex("BF0C81C8") in raw
    assert parse_tlvs(raw) == items


def test_non_minimal_length_is_accepted() -> None:
    assert parse_tlv(bytes.fromhex("5081024142")) == Tlv(0x50, b"AB")


def test_truncated_value_names_tag_and_offset() -> None:
    with pytest.raises(TruncatedData) as info:
        parse_tlvs(bytes.fromhex("500241429F0C0501"))
    assert info.value.field == "9F0C"
    assert info.value.offset == 8


def test_errors_in_nested_objects_report_absolute_offsets() -> None:
    broken = bytes.fromhex(CITY_UNION_FCI)[:-1]
    with pytest.raises(TruncatedData) as info:
        parse_fci(broken)
    assert info.value.offset == len(broken)


def test_city_union_fci_worked_example() -> None:
    raw = bytes.fromhex(CITY_UNION_FCI)
    fci = parse_fci(raw)
    assert fci.df_name == bytes.fromhex("A00000000386980701")
    assert fci.issuer_data is not None and len(fci.issuer_data) == 30
    assert fci.issuer_data[:10] == bytes.fromhex("84753100000000000000")
    assert fci.to_bytes() == raw


def test_ppse_answer_built_and_parsed() -> None:
    fci = Fci.create(
        b"2PAY.SYS.DDF01",
        directory=(
            DirectoryEntry.create(bytes.fromhex("A000000632010105"), "MOT_T_EP", 1),
            DirectoryEntry.create(bytes.fromhex("A000000333010101"), "UnionPay Debit", 2),
        ),
    )
    parsed = parse_fci(fci.to_bytes())
    assert parsed == fci
    assert [(e.aid.hex().upper(), e.label, e.priority) for e in parsed.directory] == [
        ("A000000632010105", "MOT_T_EP", 1),
        ("A000000333010101", "UnionPay Debit", 2),
    ]
    assert find_path(parsed.items, 0xA5, 0xBF0C, 0x61, 0x4F) is not None


def test_fci_structure_errors() -> None:
    with pytest.raises(UnexpectedTag):
        parse_fci(bytes.fromhex("7003840101"))
    with pytest.raises(UnexpectedTag) as info:
        parse_fci(bytes.fromhex("6F02A500"))
    assert (info.value.field, info.value.offset) == ("84", 2)
    with pytest.raises(BadLength) as length_info:
        parse_fci(bytes.fromhex("6F098401AAA50487020102"))
    assert (length_info.value.field, length_info.value.offset) == ("87", 7)
    with pytest.raises(TrailingData):
        parse_fci(bytes.fromhex("6F038401AA00"))
