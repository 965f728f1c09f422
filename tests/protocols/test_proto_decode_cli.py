"""`sscard decode`: the reference's worked examples, masking, and one-line answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reader.cli import main

RECORD_18 = "04 2d 00 00 00 00 00 01 f4 09 30 00 89 00 03 40 20 24 12 29 14 17 40 90 00"
RECORD_1E = (
    "04 00 00 30 00 89 00 03 40 01 08 00 19 00 30 00 00 00 00 01 f4 00 00 0e 01 20 24 12 "
    "29 14 17 40 10 00 01 01 10 00 ff ff ff ff 00 00 00 00 00 00 90 00"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["decode", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_transaction_record_example(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "tunion-18", RECORD_18)
    assert status == 0
    result = json.loads(out)
    assert result["sw"] == "9000"
    assert result["data"] == {
        "atc": 0x042D,
        "overdraft_limit": 0,
        "amount": 500,
        "transaction_type": 9,
        "terminal_id": "300089000340",
        "time": "2024-12-29T14:17:40",
        "time_raw": None,
        "terminal_digits": "300089000340",
    }


def test_dirty_transaction_record_decodes_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    """A 0x18 record whose time is not BCD: status 0, its fields, its raw time and the reason."""
    status, out, err = run(capsys, "tunion-18", "042d000000000001f4093000890003402024122914174A 9000")
    assert (status, err) == (0, "")
    data = json.loads(out)["data"]
    assert (data["atc"], data["amount"], data["time"], data["time_raw"]) == (0x042D, 500, None, "2024122914174A")
    assert data["unreadable"]["time"]["offset"] == 16
    assert "nibble A" in data["unreadable"]["time"]["reason"]


def test_process_record_example(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "tunion-1e", RECORD_1E)
    data = json.loads(out)["data"]
    assert status == 0
    assert (data["transaction_type"], data["industry"], data["amount"], data["balance_after"]) == (4, 1, 500, 3585)
    assert (data["city_code"], data["acquirer"]) == ("1000", "01011000FFFFFFFF")
    assert data["time"] == "2024-12-29T14:17:40"


def test_balance_example(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "balance", "00 00 0A C3 90 00")
    assert status == 0
    assert json.loads(out)["data"]["amount"] == 2755


def test_card_identification_code_example(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "ef05-record", "01 10 330300D15600000599110145FFFFFFFF")
    data = json.loads(out)["data"]
    assert status == 0
    assert data["value"] == "330300D15600000599110145FFFFFFFF"
    assert data["region_code"] == "330300"


def test_personal_fields_masked_unless_revealed(capsys: pytest.CaptureFixture[str]) -> None:
    name = "091E" + "D5C5C8FD" + "00" * 26
    _, masked, _ = run(capsys, "ef06-record", name)
    assert "张三" not in masked and json.loads(masked)["personal"] == ["value"]
    _, revealed, _ = run(capsys, "ef06-record", name, "--reveal")
    assert json.loads(revealed)["data"]["value"] == "张三"
    holder = "00 00" + "C0EECBC4" + "00" * 16 + b"510101198001011234".hex() + "00" * 14 + "01"
    _, out, _ = run(capsys, "tunion-16", holder)
    data = json.loads(out)["data"]
    assert data["holder_name"] == "***" and data["holder_id"] == "***"


@pytest.mark.parametrize(
    ("kind", "hexdata", "expected"),
    [
        ("balance", "00 0Z", "hex input: field HEX at byte 1"),
        ("balance", "000", "hex input: field HEX at byte 1"),
        ("tunion-18", RECORD_18[:30], "T-Union 0x18: field terminal_id at byte 10"),
        ("ef05-record", "0812" + "31" * 18, "EF05 record: field tag at byte 0"),
        (
            "tunion-15",
            "02002900FFFFFFFF030131040000123456789012 2020A101 20301231 0000 9000",
            "T-Union 0x15: field start_date at byte 20",
        ),
        ("ef06-record", "091E" + "FF" + "00" * 29, "EF06 record: field name at byte 2"),
        ("fci", "6F03840301", "FCI: field 84 at byte 5"),
        ("nonsense", "00", "unknown kind"),
    ],
)
def test_bad_input_is_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str], kind: str, hexdata: str, expected: str
) -> None:
    status, out, err = run(capsys, kind, hexdata)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and expected in err, err


def test_bad_input_from_the_installed_command_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "reader.cli", "decode", "tunion-1a", "00" * 127],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sscard decode: T-Union 0x1A: field crc32 at byte 127: 127 bytes, the structure has 128"
    ]
