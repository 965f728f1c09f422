"""Cards in the wild: 0x1A headers of other cities, dirty log records, the record a debit writes.

Each test here pins one defect seen on real cards; the vectors are written out by hand from
the card reference (cards.md §2.3, whose worked examples come from the T-Union Master docs,
tkerby/flipperzero-firmware-wPlugins applications/external/t_union_master/docs/card_data_format.md),
never produced by the project's own builders.
"""

from __future__ import annotations

import datetime as dt
import zlib

import pytest

from protocols import BadEncoding, CannotBuild, ProtocolError, TrailingData
from protocols import tunion as tu
from protocols.decode import decode
from protocols.image import replay
from protocols.tunion_read import read_tunion
from tests.protocols.proto_dumps import TUNION_FCI, dump

# cards.md §2.3: the 0x18 worked example (T-Union Master docs) and the same record with a
# date-time that is not BCD (nibble A in the hour), as public dumps of real cards hold.
RECORD_18 = "042d000000000001f40930008900034020241229141740"
RECORD_18_BAD_TIME = "042d000000000001f409300089000340202412291A1740"
RECORD_18_HEX_TERMINAL = "042d000000000001f409ABCDEF01234520241229141740"
# cards.md §2.3: the 0x1E worked example (T-Union Master docs).
RECORD_1E = "0400003000890003400108001900300000000001f400000e0120241229141740100001011000ffffffff000000000000"
RECORD_1E_BAD_TIME = "0400003000890003400108001900300000000001f400000e01FFFFFFFFFFFFFF100001011000ffffffff000000000000"

# cards.md §2.3 "0x1A record 01": a rail record of another city, 27 01 then length 7D, flags,
# data, no Shanghai CRC (the trailing four bytes are plain data).
CAPP_OTHER_CITY = "27017D" + "01" + "00" + "00" * 119 + "11223344"


def test_capp_header_is_record_id_then_one_length_byte() -> None:
    record = tu.CAPP_RECORD_LAYOUT.parse(bytes.fromhex(CAPP_OTHER_CITY))
    assert record.record_id == 0x2701
    assert record.record_number == 0x01
    assert record.record_length == 0x7D == 128 - 3
    assert record.un_flag == 0x01
    assert record.locked == 0x00


def test_capp_record_without_shanghai_crc_is_absent_not_an_error() -> None:
    record = tu.parse_capp_record(bytes.fromhex(CAPP_OTHER_CITY))
    assert record.shanghai_crc == "absent"
    out = decode("tunion-1a", bytes.fromhex(CAPP_OTHER_CITY))
    assert out["data"]["record_id"] == "2701"
    assert out["data"]["record_length"] == 125
    assert out["data"]["shanghai_crc"] == "absent"
    assert out["data"]["industry"] == "rail"


def test_capp_record_with_shanghai_crc_is_valid() -> None:
    # SHM sh_transport_operation.c: CRC32 over bytes 6..123, stored at 124..127, big-endian.
    body = bytes.fromhex("27017D0000") + bytes([0x00]) + bytes(range(1, 119))
    crc = zlib.crc32(body[6:124]) & 0xFFFFFFFF
    raw = body + crc.to_bytes(4, "big")
    assert tu.parse_capp_record(raw).shanghai_crc == "valid"
    assert decode("tunion-1a", raw)["data"]["shanghai_crc"] == "valid"


def test_transaction_record_with_unreadable_time_keeps_its_fields() -> None:
    raw = bytes.fromhex(RECORD_18_BAD_TIME)
    record = tu.TRANSACTION_RECORD_LAYOUT.parse(raw)
    assert (record.atc, record.amount, record.transaction_type) == (0x042D, 500, 9)
    assert record.terminal_id.hex() == "300089000340"
    assert record.time is None
    assert record.time_raw == bytes.fromhex("202412291A1740")
    assert tu.TRANSACTION_RECORD_LAYOUT.build(record) == raw


def test_transaction_record_with_hex_terminal_id_is_kept_raw() -> None:
    record = tu.TRANSACTION_RECORD_LAYOUT.parse(bytes.fromhex(RECORD_18_HEX_TERMINAL))
    assert record.terminal_id == bytes.fromhex("ABCDEF012345")
    assert record.time == dt.datetime(2024, 12, 29, 14, 17, 40)
    out = decode("tunion-18", bytes.fromhex(RECORD_18_HEX_TERMINAL))
    assert out["data"]["terminal_id"] == "ABCDEF012345"
    assert out["data"]["terminal_digits"] is None


def test_process_record_with_unreadable_time_keeps_its_fields() -> None:
    raw = bytes.fromhex(RECORD_1E_BAD_TIME)
    record = tu.PROCESS_RECORD_LAYOUT.parse(raw)
    assert (record.transaction_type, record.industry, record.amount, record.balance_after) == (4, 1, 500, 0x0E01)
    assert record.time is None and record.time_raw == b"\xff" * 7
    assert tu.PROCESS_RECORD_LAYOUT.build(record) == raw


def test_decode_shows_raw_bytes_and_reason_of_an_unreadable_time() -> None:
    out = decode("tunion-18", bytes.fromhex(RECORD_18_BAD_TIME + "9000"))
    assert out["sw"] == "9000"
    data = out["data"]
    assert data["amount"] == 500 and data["time"] is None
    assert data["time_raw"] == "202412291A1740"
    unreadable = data["unreadable"]["time"]
    assert unreadable["offset"] == 16
    assert "not BCD" in unreadable["reason"]


def test_decode_error_names_the_real_cause_when_a_status_word_follows() -> None:
    # A 0x15 file (cards.md §2.3 layout) whose start date is not BCD, pasted with its 9000.
    bad_date = "02002900FFFFFFFF0301310400001234567890122020A10120301231000090 00"
    with pytest.raises(ProtocolError) as info:
        decode("tunion-15", bytes.fromhex(bad_date.replace(" ", "")))
    assert not isinstance(info.value, TrailingData)
    assert isinstance(info.value, BadEncoding)
    assert (info.value.field, info.value.offset) == ("start_date", 20)


def test_read_tunion_goes_on_past_an_unreadable_log_record() -> None:
    pairs = [
        ("00A4040008A00000063201010500", TUNION_FCI + "9000"),
        ("00B097003C", "6A82"),
        ("00B0960037", "6A82"),
        ("805C000204", "00000AC39000"),
        ("00B201C417", RECORD_18_BAD_TIME + "9000"),
        ("00B202C417", RECORD_18 + "9000"),
        ("00B203C417", "6A83"),
        ("00B201F430", RECORD_1E_BAD_TIME + "9000"),
        ("00B202F430", RECORD_1E + "9000"),
        ("00B203F430", "6A83"),
    ]
    image = read_tunion(replay(dump(*pairs)), via_ppse=False)
    assert image is not None
    assert [r.time for r in image.transactions] == [None, dt.datetime(2024, 12, 29, 14, 17, 40)]
    assert [r.time for r in image.process_records] == [None, dt.datetime(2024, 12, 29, 14, 17, 40)]
    assert image.transactions[0].amount == 500


def test_build_process_record_matches_the_reference_example() -> None:
    from protocols.tunion_process import build_process_record

    # cards.md §2.3 "0x1E process/journey record", worked example of the T-Union Master docs,
    # written out by hand: type 04, terminal 00 00 30 00 89 00 03 40, industry 01,
    # line/station 08 00 19 00 30 00 00, amount 000001F4, balance 00000E01,
    # time 20241229141740, city 1000, acquirer 01011000FFFFFFFF, reserved 000000000000.
    expected = bytes.fromhex(
        "0400003000890003400108001900300000000001f400000e0120241229141740100001011000ffffffff000000000000"
    )
    built = build_process_record(
        transaction_type=0x04,
        terminal_number=bytes.fromhex("300089000340"),
        industry=0x01,
        line="0800",
        station="1900",
        operator_code="3000",
        amount=500,
        balance_after=0x0E01,
        time=dt.datetime(2024, 12, 29, 14, 17, 40),
        city_code=bytes.fromhex("1000"),
        acquirer=bytes.fromhex("01011000FFFFFFFF"),
    )
    assert built == expected
    assert len(built) == 48


def test_build_process_record_pads_short_codes_and_rejects_bad_input() -> None:
    from protocols.tunion_process import build_process_record

    common = {
        "transaction_type": 0x06,
        "terminal_number": bytes.fromhex("300089000340"),
        "industry": 0x02,
        "amount": 200,
        "balance_after": 1000,
        "time": dt.datetime(2025, 1, 2, 3, 4, 5),
        "city_code": bytes.fromhex("2900"),
        "acquirer": bytes.fromhex("12002900FFFFFFFF"),
    }
    built = build_process_record(line="12", station="7", operator_code="", **common)  # type: ignore[arg-type]
    assert built[0x0A:0x11] == bytes.fromhex("00120007000000")
    with pytest.raises(CannotBuild) as long_line:
        build_process_record(line="12345", station="1", operator_code="1", **common)  # type: ignore[arg-type]
    assert (long_line.value.field, long_line.value.offset) == ("line", 0x0A)
    with pytest.raises(CannotBuild) as letters:
        build_process_record(line="1", station="A1", operator_code="1", **common)  # type: ignore[arg-type]
    assert letters.value.field == "station"
    negative = dict(common, balance_after=-1)
    with pytest.raises(CannotBuild) as below_zero:
        build_process_record(line="1", station="1", operator_code="1", **negative)  # type: ignore[arg-type]
    assert (below_zero.value.field, below_zero.value.offset) == ("balance_after", 0x15)
    short = dict(common, terminal_number=bytes(5))
    with pytest.raises(CannotBuild) as terminal:
        build_process_record(line="1", station="1", operator_code="1", **short)  # type: ignore[arg-type]
    assert (terminal.value.field, terminal.value.offset) == ("terminal_id", 0x01)
