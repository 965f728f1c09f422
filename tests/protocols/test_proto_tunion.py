"""T-Union structures: the reference's worked examples, exact round trips, APDU bytes."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols import BadChecksum, BadEncoding, BadValue, CannotBuild, TrailingData, TruncatedData
from protocols import tunion as tu

RECORD_18 = "042d000000000001f40930008900034020241229141740"
RECORD_1E = "0400003000890003400108001900300000000001f400000e0120241229141740100001011000ffffffff000000000000"


def test_transaction_record_worked_example() -> None:
    raw = bytes.fromhex(RECORD_18)
    record = tu.TRANSACTION_RECORD_LAYOUT.parse(raw)
    assert record.atc == 0x042D
    assert record.amount == 500
    assert record.transaction_type == tu.TRANSACTION_CAPP_PURCHASE
    assert record.terminal_id.hex() == "300089000340"
    assert record.time == dt.datetime(2024, 12, 29, 14, 17, 40)
    assert tu.TRANSACTION_RECORD_LAYOUT.build(record) == raw


def test_process_record_worked_example() -> None:
    raw = bytes.fromhex(RECORD_1E)
    record = tu.PROCESS_RECORD_LAYOUT.parse(raw)
    assert record.transaction_type == 0x04
    assert record.terminal_id.hex() == "0000300089000340"
    assert record.industry == 1
    assert record.amount == 500
    assert record.balance_after == 0x0E01
    assert record.time == dt.datetime(2024, 12, 29, 14, 17, 40)
    assert record.city_code.hex() == "1000"
    assert record.acquirer.hex() == "01011000ffffffff"
    assert tu.PROCESS_RECORD_LAYOUT.build(record) == raw


def test_balance_worked_example() -> None:
    balance = tu.BALANCE_LAYOUT.parse(bytes.fromhex("00000AC3"))
    assert balance.amount == 2755
    assert tu.BALANCE_LAYOUT.build(balance) == bytes.fromhex("00000AC3")
    assert tu.BALANCE_LAYOUT.parse(bytes.fromhex("80000AC3")).amount == 2755


def test_public_info_fields() -> None:
    raw = bytes.fromhex("02002900FFFFFFFF03013104000012345678901220200101203012310000")
    info = tu.PUBLIC_INFO_LAYOUT.parse(raw)
    assert info.city_code == "2900"
    assert info.card_number == "1040000123456789012"
    assert info.serial_bytes == bytes.fromhex("0000123456789012")
    assert info.start_date == dt.date(2020, 1, 1) and info.expiry_date == dt.date(2030, 12, 31)
    assert tu.PUBLIC_INFO_LAYOUT.build(info) == raw


def test_holder_info_gbk_round_trip() -> None:
    info = tu.HolderInfo(1, 0, "张三", "110101199001011234", 0)
    raw = tu.HOLDER_INFO_LAYOUT.build(info)
    assert len(raw) == 55
    assert raw[2:6] == "张三".encode("gbk")
    assert tu.HOLDER_INFO_LAYOUT.parse(raw) == info


def test_capp_record_crc() -> None:
    record = tu.CappRecord(0x2701, tu.CAPP_DATA_LENGTH, 0, 0, bytes(range(119)), 0).sealed()
    raw = tu.CAPP_RECORD_LAYOUT.build(record)
    assert len(raw) == 128
    assert raw[:3] == bytes.fromhex("27017D")
    # Shanghai's CRC32 covers bytes 6..123 only (SHM Get_CRC32(&data[6], 118)): byte 5 is outside.
    assert tu.parse_capp_record(raw, verify_crc=True) == record
    outside = raw[:5] + bytes([raw[5] ^ 1]) + raw[6:]
    assert tu.parse_capp_record(outside, verify_crc=True).crc_ok
    broken = raw[:50] + bytes([raw[50] ^ 1]) + raw[51:]
    with pytest.raises(BadChecksum) as info:
        tu.parse_capp_record(broken, verify_crc=True)
    assert (info.value.field, info.value.offset) == ("crc32", 124)
    assert tu.parse_capp_record(broken).shanghai_crc == "absent"


def test_purchase_structures_round_trip() -> None:
    answer = bytes.fromhex("0000271000050000000100A1B2C3D4")
    init = tu.INIT_PURCHASE_ANSWER_LAYOUT.parse(answer)
    assert (init.balance, init.offline_atc, init.key_version, init.card_random) == (
        10000,
        5,
        1,
        bytes.fromhex("A1B2C3D4"),
    )
    assert tu.INIT_PURCHASE_ANSWER_LAYOUT.build(init) == answer
    mac1_input = tu.Mac1Input(init.card_random, 5, 200, 9, dt.datetime(2025, 1, 2, 3, 4, 5), 1, 0, bytes(8), bytes(8))
    raw = tu.MAC1_INPUT_LAYOUT.build(mac1_input)
    assert len(raw) == 36
    assert raw[11:18] == bytes.fromhex("20250102030405")
    assert tu.MAC1_INPUT_LAYOUT.parse(raw) == mac1_input
    debit = tu.DEBIT_ANSWER_LAYOUT.parse(bytes.fromhex("1111111122222222"))
    proof = tu.TRANSACTION_PROOF_ANSWER_LAYOUT.parse(bytes.fromhex("2222222211111111"))
    assert debit.tac == proof.tac and debit.mac2 == proof.mac2


def test_apdu_builders_match_reference_bytes() -> None:
    assert tu.get_balance().to_bytes().hex().upper() == "805C000204"
    assert tu.get_balance(include_overdraft=False).to_bytes().hex().upper() == "805C030204"
    assert tu.read_binary_sfi(tu.SFI_PUBLIC, 0x1E).to_bytes().hex().upper() == "00B095001E"
    assert tu.read_record_sfi(tu.SFI_TRANSACTIONS, 1).to_bytes().hex().upper() == "00B201C400"
    assert tu.read_record_sfi(tu.SFI_PROCESS, 1).to_bytes().hex().upper() == "00B201F400"
    assert tu.read_record_sfi(tu.SFI_CAPP, 1, 0x80).to_bytes().hex().upper() == "00B201D480"
    assert tu.select_tunion().to_bytes().hex().upper() == "00A4040008A00000063201010500"
    init = tu.initialize_for_purchase(tu.InitPurchaseRequest(1, 200, bytes.fromhex("112233445566")))
    assert init.to_bytes().hex().upper() == "805003020B01000000C81122334455660F"
    assert tu.update_capp_data_cache(tu.SFI_CAPP, 1, bytes(128)).to_bytes()[:5].hex().upper() == "80DC01D080"
    assert tu.update_capp_data_cache(tu.SFI_PROCESS, 0, bytes(48)).to_bytes()[:5].hex().upper() == "80DC00F030"
    debit = tu.debit_for_purchase(tu.DebitRequest(7, dt.datetime(2025, 1, 2, 3, 4, 5), bytes(4)))
    assert debit.to_bytes().hex().upper() == "805401000F" + "00000007" + "20250102030405" + "00000000" + "08"
    assert tu.get_transaction_proof(0x0006).to_bytes().hex().upper() == "805A000902000608"
    assert tu.psam_read_terminal_number().to_bytes().hex().upper() == "00B0960006"
    assert tu.psam_select_purchase_app().to_bytes().hex().upper() == "00A40000028011"
    assert tu.psam_verify_mac2(bytes(4)).to_bytes().hex().upper() == "807200000400000000"


def test_errors_name_field_and_offset() -> None:
    raw = bytes.fromhex(RECORD_18)
    with pytest.raises(TruncatedData) as cut:
        tu.TRANSACTION_RECORD_LAYOUT.parse(raw[:12])
    assert (cut.value.structure, cut.value.field, cut.value.offset) == ("T-Union 0x18", "terminal_id", 12)
    with pytest.raises(TrailingData) as extended:
        tu.TRANSACTION_RECORD_LAYOUT.parse(raw + b"\x00")
    assert extended.value.offset == 23
    # A log record's time is lenient (real cards): unknown, not an error; the reason is kept.
    nibble = tu.TRANSACTION_RECORD_LAYOUT.parse(raw[:16] + b"\x2a" + raw[17:])
    assert nibble.time is None and nibble.time_raw == b"\x2a" + raw[17:]
    [problem] = tu.TRANSACTION_RECORD_LAYOUT.problems(nibble)
    assert (problem.field, problem.offset) == ("time", 16) and "not BCD" in problem.reason
    month = tu.TRANSACTION_RECORD_LAYOUT.parse(raw[:18] + b"\x13" + raw[19:])
    assert month.time is None and "month" in tu.TRANSACTION_RECORD_LAYOUT.problems(month)[0].reason
    # Strict structures keep failing on a bad date, naming field and offset.
    public = bytes.fromhex("02002900FFFFFFFF03013104000012345678901220200101203012310000")
    with pytest.raises(BadEncoding) as date_nibble:
        tu.PUBLIC_INFO_LAYOUT.parse(public[:20] + b"\x2a" + public[21:])
    assert (date_nibble.value.field, date_nibble.value.offset) == ("start_date", 20)
    with pytest.raises(BadValue) as date_month:
        tu.PUBLIC_INFO_LAYOUT.parse(public[:22] + b"\x13" + public[23:])
    assert date_month.value.field == "start_date"
    with pytest.raises(CannotBuild) as build:
        tu.BALANCE_LAYOUT.build(tu.Balance(-1))
    assert build.value.field == "raw"
