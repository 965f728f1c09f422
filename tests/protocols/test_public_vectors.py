"""Every structure against published answers (tests/protocols/public_vectors.py names the sources).

Each vector asserts the field values its source states; none is produced by this project's
own builders. Together they pin 0x15, 0x17, 0x18, 0x1A, 0x1E, FCI, EF05, GET BALANCE and
the INITIALIZE / DEBIT data the terminal sends.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import pytest

from protocols import tunion as tu
from protocols.decode import decode
from protocols.fci import parse_fci
from tests.protocols.public_vectors import VECTORS, Vector

STRIP_SW = ("0x15", "0x18", "balance", "fci", "0x17-prefix")


def _body(vector: Vector) -> bytes:
    raw = vector.raw
    if vector.structure in STRIP_SW and raw.endswith(b"\x90\x00") and vector.structure != "fci":
        return raw[:-2]
    return raw


def _plain(value: Any) -> Any:
    return value.hex().upper() if isinstance(value, bytes) else value


def _check_fields(record: Any, expected: dict[str, Any]) -> None:
    for name, want in expected.items():
        got = _plain(getattr(record, name))
        assert got == want, f"{name}: {got!r} != {want!r}"


def _ids(vector: Vector) -> str:
    return f"{vector.structure}:{vector.source.split()[0]}:{vector.hex[:12]}"


def _of(*structures: str) -> list[Vector]:
    return [v for v in VECTORS if v.structure in structures]


@pytest.mark.parametrize("vector", _of("0x18"), ids=_ids)
def test_transaction_records(vector: Vector) -> None:
    record = tu.TRANSACTION_RECORD_LAYOUT.parse(_body(vector))
    _check_fields(record, vector.expected)
    assert record.time_raw is None


@pytest.mark.parametrize("vector", _of("0x1E"), ids=_ids)
def test_process_records(vector: Vector) -> None:
    record = tu.PROCESS_RECORD_LAYOUT.parse(vector.raw)
    _check_fields(record, vector.expected)


@pytest.mark.parametrize("vector", _of("0x15"), ids=_ids)
def test_public_information(vector: Vector) -> None:
    info = tu.PUBLIC_INFO_LAYOUT.parse(_body(vector))
    expected = dict(vector.expected)
    serial = expected.pop("card_serial_hex", None)
    if serial is not None:
        assert info.application_serial == serial
    _check_fields(info, expected)


@pytest.mark.parametrize("vector", _of("0x17"), ids=_ids)
def test_management_information(vector: Vector) -> None:
    _check_fields(tu.MANAGEMENT_INFO_LAYOUT.parse(vector.raw), vector.expected)


@pytest.mark.parametrize("vector", _of("0x17-prefix"), ids=_ids)
def test_management_information_prefix_offsets(vector: Vector) -> None:
    """nfsee reads only 11 bytes: each field the layout places there must sit where it reads."""
    raw = _body(vector)
    layout = tu.MANAGEMENT_INFO_LAYOUT
    for name, want in vector.expected.items():
        span = layout.span(name)
        chunk = raw[span.offset : span.offset + span.size]
        assert (chunk.hex().upper() if isinstance(want, str) else int.from_bytes(chunk, "big")) == want


@pytest.mark.parametrize("vector", _of("balance"), ids=_ids)
def test_balances(vector: Vector) -> None:
    assert tu.BALANCE_LAYOUT.parse(_body(vector)).amount == vector.expected["amount"]
    assert decode("balance", vector.raw)["data"]["amount"] == vector.expected["amount"]


@pytest.mark.parametrize("vector", _of("fci"), ids=_ids)
def test_select_answers(vector: Vector) -> None:
    raw = vector.raw[:-2] if vector.raw.endswith(b"\x90\x00") else vector.raw
    fci = parse_fci(raw)
    expected = vector.expected
    assert fci.df_name.hex().upper() == expected["df_name"]
    if "app_version" in expected:
        assert fci.app_version is not None and fci.app_version.hex().upper() == expected["app_version"]
    if "issuer_data_length" in expected:
        assert fci.issuer_data is not None and len(fci.issuer_data) == expected["issuer_data_length"]
    if "label" in expected:
        assert (fci.label, fci.priority) == (expected["label"], expected["priority"])
    if "directory" in expected:
        assert [(e.aid.hex().upper(), e.label, e.priority) for e in fci.directory] == expected["directory"]
    if "card_number" in expected:
        public = decode("fci", vector.raw)["data"]["tunion_public_info"]
        assert public["application_serial"][1:] == expected["card_number"]
        assert public["issuer_id"][4:8] == expected["city_code"]


@pytest.mark.parametrize("vector", _of("ef05"), ids=_ids)
def test_ef05_records(vector: Vector) -> None:
    data = decode("ef05-record", vector.raw)["data"]
    assert int(data["tag"], 16) == vector.expected["tag"]
    for name, want in vector.expected.items():
        if name != "tag":
            assert data[name] == want


@pytest.mark.parametrize("vector", _of("0x1A"), ids=_ids)
def test_capp_records_of_other_cities(vector: Vector) -> None:
    record = tu.parse_capp_record(vector.raw)
    _check_fields(record, vector.expected)
    data = decode("tunion-1a", vector.raw)["data"]
    assert data["record_id"] == f"{vector.expected['record_id']:04X}"
    assert data["record_length"] == vector.expected["record_length"]
    assert data["shanghai_crc"] == "absent"


def test_shanghai_rail_record_as_the_gate_writes_it() -> None:
    [vector] = _of("0x1A-shanghai-entry")
    record = bytearray(vector.raw + bytes(128 - len(vector.raw)))
    record[14] = 0x01
    record[15:17] = bytes.fromhex("2900")
    record[120], record[122], record[123] = 0x41, 0x55, 0x00
    record[124:128] = (zlib.crc32(bytes(record[6:124])) & 0xFFFFFFFF).to_bytes(4, "big")
    parsed = tu.parse_capp_record(bytes(record), verify_crc=True)
    assert parsed.record_id == vector.expected["record_id"]
    assert parsed.shanghai_crc == vector.expected["shanghai_crc"]
    fields = decode("tunion-1a", bytes(record))["data"]["shanghai_rail_fields"]
    assert fields["status"] == vector.expected["status"]
    assert fields["entry_city"] == vector.expected["entry_city"]
    assert fields["entry_sign"] == vector.expected["entry_sign"]
    assert fields["entry_exit_status"] == vector.expected["entry_exit_status"]


def test_shanghai_crc_is_the_catalogued_crc32_over_bytes_6_on() -> None:
    [vector] = _of("crc32")
    assert tu.capp_crc(b"\x00" + vector.raw) == vector.expected["crc32"]


def test_initialize_request_seen_on_the_wire() -> None:
    [vector] = _of("init-request")
    request = tu.INIT_PURCHASE_REQUEST_LAYOUT.parse(vector.raw)
    assert (request.key_index, request.amount, request.terminal_id.hex()) == (
        vector.expected["key_index"],
        vector.expected["amount"],
        vector.expected["terminal_id"],
    )


def test_debit_request_seen_on_the_wire() -> None:
    [vector] = _of("debit-request")
    request = tu.DEBIT_REQUEST_LAYOUT.parse(vector.raw)
    assert request.terminal_sequence == vector.expected["terminal_sequence"]
    assert request.time == vector.expected["time"]
    assert request.mac1.hex().upper() == vector.expected["mac1"]


def test_vector_count_and_sources() -> None:
    by_source = Counter(v.source for v in VECTORS)
    assert len(VECTORS) >= 45 and len(by_source) >= 3
    covered = {v.structure for v in VECTORS}
    assert {"0x15", "0x17", "0x18", "0x1A", "0x1E", "fci", "ef05", "balance"} <= covered
    assert all(isinstance(v.expected, dict) and v.expected for v in VECTORS)
