"""One-shot decoders for a single response, by kind: what `sscard decode KIND HEX` runs.

A field engineer pastes bytes from a log; the answer is JSON with personal fields masked
unless revealed, or a `ProtocolError` naming structure, field and offset. Responses copied
with their trailing status word 9000 are accepted: if the bytes do not parse as they are
and end in 9000, the status word is split off and reported separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocols import ssse
from protocols import tunion as tu
from protocols.apdu import CommandApdu
from protocols.ecash import parse_amount
from protocols.errors import BadEncoding, ProtocolError, TrailingData, TruncatedData
from protocols.fci import parse_fci
from protocols.image import plain_value, to_jsonable
from protocols.layout import Layout
from protocols.marks import PERSONAL
from protocols.status import describe
from protocols.tlv import Tlv, iter_tlvs


class UnknownKind(ValueError):
    """A decode kind that is not registered."""


@dataclass(frozen=True)
class _Item:
    tag: str
    name: str
    value: Any
    declared_length: int
    partial: bool


@dataclass(frozen=True)
class _PersonalItem:
    tag: str
    name: str
    value: Any = field(metadata=PERSONAL)
    declared_length: int = 0
    partial: bool = False


Decoded = tuple[Any, dict[str, Any]]
"""A record for `to_jsonable` and derived values (never personal) shown beside its fields."""


def _tlv_tree(data: bytes, base: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in iter_tlvs(data, "BER-TLV", base):
        node: dict[str, Any] = {"tag": f"{item.tlv.tag:02X}", "length": len(item.tlv.value)}
        if item.tlv.constructed:
            node["children"] = _tlv_tree(item.tlv.value, item.value_offset)
        else:
            node["value"] = item.tlv.value.hex().upper()
        out.append(node)
    return out


def _decode_sw(data: bytes) -> Decoded:
    if len(data) != 2:
        raise TruncatedData("status word", "sw", min(len(data), 2), f"{len(data)} bytes, a status word is 2")
    info = describe(int.from_bytes(data, "big"))
    error = None if info.error is None else info.error.__name__
    return None, {"sw": f"{info.sw:04X}", "meaning": info.meaning, "error": error}


def _decode_tlv(data: bytes) -> Decoded:
    if not data:
        raise TruncatedData("BER-TLV", "tag", 0, "empty input")
    return None, {"objects": _tlv_tree(data)}


def _tlv_dict(tlv: Tlv) -> dict[str, Any]:
    return {"tag": f"{tlv.tag:02X}", "value": tlv.value.hex().upper()}


def _decode_fci(data: bytes) -> Decoded:
    fci = parse_fci(data)
    derived: dict[str, Any] = {
        "df_name": fci.df_name.hex().upper(),
        "label": fci.label,
        "priority": fci.priority,
        "app_version": plain_value(fci.app_version),
        "issuer_data": plain_value(fci.issuer_data),
        "directory": [{"aid": e.aid.hex().upper(), "label": e.label, "priority": e.priority} for e in fci.directory],
        "objects": _tlv_tree(data),
    }
    if fci.df_name == ssse.SSSE_DF_NAME:
        derived["ssse_algorithm_id"] = ssse.algorithm_id(fci)
    if fci.issuer_data is not None and len(fci.issuer_data) == tu.PUBLIC_INFO_LAYOUT.size:
        try:
            public = tu.PUBLIC_INFO_LAYOUT.parse(fci.issuer_data)
        except ProtocolError:
            public = None
        if public is not None:
            derived["tunion_public_info"] = to_jsonable(public)["data"]
    return None, derived


def _item_decoder(ef: bytes) -> Callable[[bytes], Decoded]:
    def decode(data: bytes) -> Decoded:
        record = ssse.parse_item_record(data, ef)
        spec = record.spec
        view_type = _PersonalItem if spec.personal else _Item
        view = view_type(f"{record.tag:02X}", spec.name, record.value, record.declared_length, record.partial)
        derived: dict[str, Any] = {}
        if record.tag == 0x01 and isinstance(record.value, bytes):
            derived["region_code"] = ssse.region_code(record.value)
        if record.tag == 0x03 and isinstance(record.value, str):
            derived["generation"] = int(ssse.generation_from_version(record.value))
        return view, derived

    return decode


def _layout_decoder(layout: Layout[Any], *properties: str) -> Callable[[bytes], Decoded]:
    """Fields of `layout`, the named derived properties, and why any lenient field is unknown."""

    def decode(data: bytes) -> Decoded:
        record = layout.parse(data)
        derived = {name: plain_value(getattr(record, name)) for name in properties}
        problems = layout.problems(record)
        if problems:
            derived["unreadable"] = {
                p.field: {"offset": p.offset, "raw": p.raw.hex().upper(), "reason": p.reason} for p in problems
            }
        return record, derived

    return decode


def _decode_capp(data: bytes) -> Decoded:
    """Header, industry, Shanghai CRC; the Shanghai rail field map only where its CRC proves it."""
    record = tu.parse_capp_record(data)
    derived: dict[str, Any] = {
        "record_id": f"{record.record_id:04X}",
        "record_tag": f"{record.record_tag:02X}",
        "record_number": record.record_number,
        "industry": record.industry,
        "record_length": record.record_length,
        "length_ok": record.length_ok,
        "shanghai_crc": record.shanghai_crc,
    }
    if record.shanghai_crc == "valid" and record.industry == "rail":
        rail = tu.shanghai_rail_fields(record)
        derived["shanghai_rail_fields"] = to_jsonable(rail)["data"]
    return record, derived


def _decode_amount(data: bytes) -> Decoded:
    tag, amount = parse_amount(data)
    return None, {"tag": f"{tag:04X}", "amount": amount}


def _decode_command(data: bytes) -> Decoded:
    apdu = CommandApdu.parse(data)
    return apdu, {"case": apdu.case}


KINDS: dict[str, tuple[str, Callable[[bytes], Decoded]]] = {
    "sw": ("a status word (SW1 SW2)", _decode_sw),
    "tlv": ("any BER-TLV objects", _decode_tlv),
    "fci": ("a SELECT answer (6F template)", _decode_fci),
    "ef05-record": ("an SSSE EF05 record (READ RECORD answer)", _item_decoder(ssse.EF05)),
    "ef06-record": ("an SSSE EF06 record (READ RECORD answer)", _item_decoder(ssse.EF06)),
    "tunion-15": (
        "T-Union public information",
        _layout_decoder(tu.PUBLIC_INFO_LAYOUT, "card_number", "city_code"),
    ),
    "tunion-16": ("T-Union holder information", _layout_decoder(tu.HOLDER_INFO_LAYOUT)),
    "tunion-17": ("T-Union management information", _layout_decoder(tu.MANAGEMENT_INFO_LAYOUT, "interoperable")),
    "tunion-18": (
        "T-Union transaction record",
        _layout_decoder(tu.TRANSACTION_RECORD_LAYOUT, "terminal_digits"),
    ),
    "tunion-1a": ("T-Union CAPP record (0x1A, 128 bytes)", _decode_capp),
    "tunion-1e": ("T-Union process record", _layout_decoder(tu.PROCESS_RECORD_LAYOUT, "terminal_digits")),
    "balance": ("GET BALANCE answer", _layout_decoder(tu.BALANCE_LAYOUT, "amount")),
    "init-purchase": (
        "INITIALIZE FOR PURCHASE answer",
        _layout_decoder(tu.INIT_PURCHASE_ANSWER_LAYOUT, "usable_balance"),
    ),
    "debit": ("DEBIT FOR PURCHASE answer", _layout_decoder(tu.DEBIT_ANSWER_LAYOUT)),
    "transaction-proof": ("GET TRANSACTION PROOF answer", _layout_decoder(tu.TRANSACTION_PROOF_ANSWER_LAYOUT)),
    "mac1-input": ("PSAM 80 70 data (36 bytes)", _layout_decoder(tu.MAC1_INPUT_LAYOUT)),
    "mac1": ("PSAM 80 70 answer", _layout_decoder(tu.MAC1_ANSWER_LAYOUT)),
    "ecash": ("UnionPay GET DATA amount answer (9F79 ...)", _decode_amount),
    "command": ("a command APDU", _decode_command),
}


def parse_hex(text: str) -> bytes:
    """Hex digits, spaces allowed; errors name the byte offset of the first bad character."""
    digits: list[str] = []
    for ch in text:
        if ch in " \t\r\n:":
            continue
        if ch not in "0123456789abcdefABCDEF":
            raise BadEncoding("hex input", "HEX", len(digits) // 2, f"{ch!r} is not a hex digit")
        digits.append(ch)
    if len(digits) % 2:
        raise TruncatedData("hex input", "HEX", len(digits) // 2, "odd number of hex digits")
    return bytes.fromhex("".join(digits))


def decode(kind: str, data: bytes, reveal: bool = False) -> dict[str, Any]:
    """Decode `data` as `kind`; raises `ProtocolError` or `UnknownKind`."""
    entry = KINDS.get(kind)
    if entry is None:
        raise UnknownKind(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    decoder = entry[1]
    sw: str | None = None
    try:
        record, derived = decoder(data)
    except ProtocolError as whole:
        if kind == "sw" or len(data) < 2 or data[-2:] != b"\x90\x00":
            raise
        try:
            record, derived = decoder(data[:-2])
        except ProtocolError as stripped:
            # With its status word split off the input has the structure's length: what
            # fails then is the real cause, not the two bytes of 9000 beyond the end.
            raise (stripped if isinstance(whole, TrailingData) else whole) from None
        sw = "9000"
    out: dict[str, Any] = {"kind": kind}
    if record is not None:
        out.update(to_jsonable(record, reveal))
        out["data"].update(derived)
    else:
        out.update({"data": derived, "personal": [], "revealed": reveal})
    if sw is not None:
        out["sw"] = sw
    return out


def describe_kinds() -> dict[str, str]:
    return {name: entry[0] for name, entry in KINDS.items()}


__all__ = ["KINDS", "UnknownKind", "decode", "describe_kinds", "parse_hex"]
