"""Command and response APDUs: the four short cases, both directions."""

from __future__ import annotations

import pytest

from protocols import BadLength, CommandApdu, ResponseApdu, TrailingData, TruncatedData
from protocols.errors import BadValue


@pytest.mark.parametrize(
    ("apdu", "raw", "case"),
    [
        (CommandApdu(0x00, 0x84, 0x00, 0x00), "00840000", 1),
        (CommandApdu(0x80, 0x5C, 0x00, 0x02, le=4), "805C000204", 2),
        (CommandApdu(0x00, 0xB2, 0x01, 0xC4, le=256), "00B201C400", 2),
        (CommandApdu(0x00, 0xA4, 0x02, 0x00, bytes.fromhex("EF05")), "00A4020002EF05", 3),
        (
            CommandApdu(0x00, 0xA4, 0x04, 0x00, bytes.fromhex("A000000632010105"), 256),
            "00A4040008A00000063201010500",
            4,
        ),
    ],
)
def test_command_cases_round_trip(apdu: CommandApdu, raw: str, case: int) -> None:
    assert apdu.to_bytes() == bytes.fromhex(raw)
    assert apdu.case == case
    assert CommandApdu.parse(bytes.fromhex(raw)) == apdu


def test_command_parse_rejects_malformed() -> None:
    with pytest.raises(TruncatedData) as info:
        CommandApdu.parse(b"\x00\xa4")
    assert (info.value.field, info.value.offset) == ("p1", 2)
    with pytest.raises(TruncatedData):
        CommandApdu.parse(bytes.fromhex("00A4040008A0000006"))
    with pytest.raises(TrailingData):
        CommandApdu.parse(bytes.fromhex("00A4020002EF050000"))
    with pytest.raises(BadLength):
        CommandApdu.parse(bytes.fromhex("00A40200000102"))


def test_command_rejects_unencodable_values() -> None:
    with pytest.raises(BadValue):
        CommandApdu(0x100, 0, 0, 0)
    with pytest.raises(BadLength):
        CommandApdu(0, 0, 0, 0, bytes(256))
    with pytest.raises(BadValue):
        CommandApdu(0, 0, 0, 0, le=0)


def test_response_split_and_check() -> None:
    response = ResponseApdu.parse(bytes.fromhex("00000AC39000"))
    assert response.data == bytes.fromhex("00000AC3")
    assert response.sw == 0x9000 and response.ok
    assert response.check("GET BALANCE") == response.data
    assert response.to_bytes() == bytes.fromhex("00000AC39000")
    with pytest.raises(TruncatedData) as info:
        ResponseApdu.parse(b"\x90")
    assert info.value.field == "sw"
