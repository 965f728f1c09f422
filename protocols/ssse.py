"""The social security application (SSSE): selection, EF05/EF06 items, generation, region.

Records of EF05 and EF06 are `tag(1) length(1) value`, and the tag doubles as the record
identifier, so items are read with READ RECORD by identifier (P1 = tag, P2 = 00 for the
current EF): record *numbers* drift between card generations, identifiers do not.

Item lengths and encodings follow the card reference (section 1.3, 1.4). Real cards answer
with the length the card was personalised with, so text and binary items accept any length
the record declares; date items must be 4 bytes. The card number (07) is read with Le 0B
(its first 9 characters, as the reference implementations do), so its record may declare
more bytes than it carries: that one partial answer is accepted and round-trips.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

import construct as c

from protocols import codecs
from protocols.apdu import CommandApdu
from protocols.errors import BadEncoding, BadLength, BadValue, CannotBuild, TrailingData, TruncatedData, UnexpectedTag
from protocols.fci import Fci
from protocols.tlv import find, parse_tlvs

SSSE_DF_NAME = b"sx1.sh." + "社会保障".encode("gbk")
EF05 = bytes.fromhex("EF05")
EF06 = bytes.fromhex("EF06")
DEFAULT_ALGORITHM_ID = 0x01

ItemValue = str | bytes | dt.date | None


class Encoding(enum.Enum):
    """How an item's value bytes are encoded."""

    BINARY = "b"
    AN = "an"
    CN = "cn"
    GBK = "gbk"
    DATE = "date"


@dataclass(frozen=True)
class ItemSpec:
    """One data item of EF05 or EF06: where it lives, how long, how encoded, whether personal."""

    tag: int
    name: str
    ef: bytes
    length: int
    encoding: Encoding
    personal: bool = False

    @property
    def le(self) -> int:
        """Le for READ RECORD: tag and length bytes plus the value."""
        return 2 + self.length


ITEMS: dict[int, ItemSpec] = {
    spec.tag: spec
    for spec in (
        ItemSpec(0x01, "card_identification_code", EF05, 16, Encoding.BINARY),
        ItemSpec(0x02, "card_type", EF05, 1, Encoding.AN),
        ItemSpec(0x03, "spec_version", EF05, 4, Encoding.AN),
        ItemSpec(0x04, "initialising_institution", EF05, 12, Encoding.BINARY),
        ItemSpec(0x05, "issue_date", EF05, 4, Encoding.DATE),
        ItemSpec(0x06, "expiry_date", EF05, 4, Encoding.DATE),
        ItemSpec(0x07, "card_number", EF05, 9, Encoding.AN, personal=True),
        ItemSpec(0x08, "social_security_number", EF06, 18, Encoding.AN, personal=True),
        ItemSpec(0x09, "name", EF06, 30, Encoding.GBK, personal=True),
        ItemSpec(0x4E, "name_extension", EF06, 20, Encoding.GBK, personal=True),
        ItemSpec(0x0A, "sex", EF06, 1, Encoding.AN),
        ItemSpec(0x0B, "ethnicity", EF06, 1, Encoding.CN),
        ItemSpec(0x0C, "birthplace", EF06, 3, Encoding.CN, personal=True),
        ItemSpec(0x0D, "birth_date", EF06, 4, Encoding.DATE, personal=True),
    )
}
ITEMS_BY_NAME: dict[str, ItemSpec] = {spec.name: spec for spec in ITEMS.values()}
EF05_TAGS = tuple(tag for tag, spec in ITEMS.items() if spec.ef == EF05)
EF06_TAGS = tuple(tag for tag, spec in ITEMS.items() if spec.ef == EF06)
PERSONAL_ITEMS = frozenset(spec.name for spec in ITEMS.values() if spec.personal)

EF_RECORD: Any = c.Struct("tag" / c.Int8ub, "length" / c.Int8ub, "value" / c.Bytes(c.this.length))
"""The wire form of one EF05/EF06 record (the construct used to build; parsing checks first)."""


@dataclass(frozen=True)
class ItemRecord:
    """One record of EF05/EF06: the item, its decoded value, and the length the record declared."""

    tag: int
    value: ItemValue
    declared_length: int
    partial: bool = False
    """True for a card number read with Le 0B from a record that declares more than 9 bytes."""

    @property
    def spec(self) -> ItemSpec:
        return ITEMS[self.tag]

    @property
    def name(self) -> str:
        return self.spec.name


def _decode_value(spec: ItemSpec, raw: bytes) -> ItemValue:
    if spec.encoding is Encoding.BINARY:
        return raw
    if spec.encoding is Encoding.AN:
        return codecs.decode_an(raw)
    if spec.encoding is Encoding.CN:
        return codecs.decode_cn(raw)
    if spec.encoding is Encoding.GBK:
        return codecs.decode_gbk(raw)
    return codecs.decode_date(raw)


def _encode_value(spec: ItemSpec, value: ItemValue, size: int) -> bytes:
    if spec.encoding is Encoding.BINARY:
        if not isinstance(value, bytes) or len(value) != size:
            raise codecs.FieldError(f"{value!r} is not {size} bytes", "value")
        return value
    if spec.encoding is Encoding.DATE:
        if value is not None and not isinstance(value, dt.date):
            raise codecs.FieldError(f"{value!r} is not a date", "value")
        return codecs.encode_date(value)
    if not isinstance(value, str):
        raise codecs.FieldError(f"{value!r} is not text", "value")
    if spec.encoding is Encoding.AN:
        return codecs.encode_an(value, size)
    if spec.encoding is Encoding.CN:
        return codecs.encode_cn(value, size)
    return codecs.encode_gbk(value, size)


def parse_item_record(data: bytes, ef: bytes | None = None, expected_tag: int | None = None) -> ItemRecord:
    """Parse one READ RECORD answer of EF05/EF06 (without the status word)."""
    structure = "EF05 record" if ef == EF05 else "EF06 record" if ef == EF06 else "SSSE record"
    data = bytes(data)
    if len(data) < 2:
        raise TruncatedData(structure, ("tag", "length")[len(data)], len(data), f"{len(data)} bytes, need 2")
    tag, declared = data[0], data[1]
    spec = ITEMS.get(tag)
    if spec is None or (ef is not None and spec.ef != ef):
        where = "" if ef is None else f" of {ef.hex().upper()}"
        raise UnexpectedTag(structure, "tag", 0, f"tag {tag:02X} is not an item{where}")
    if expected_tag is not None and tag != expected_tag:
        raise UnexpectedTag(structure, "tag", 0, f"tag {tag:02X}, expected {expected_tag:02X}")
    raw = data[2:]
    if len(raw) > declared:
        raise TrailingData(structure, spec.name, 2 + declared, f"{len(raw) - declared} bytes beyond length {declared}")
    partial_card_number = tag == 0x07 and len(raw) == spec.length and declared > spec.length
    if len(raw) < declared and not partial_card_number:
        raise TruncatedData(structure, spec.name, len(data), f"length {declared} but {len(raw)} value bytes")
    if spec.encoding is Encoding.DATE and declared != 4:
        raise BadLength(structure, "length", 1, f"{spec.name} of {declared} bytes, expected 4")
    if declared == 0:
        raise BadLength(structure, "length", 1, f"{spec.name} of 0 bytes")
    try:
        value = _decode_value(spec, raw)
    except codecs.FieldError as exc:
        kind = BadValue if exc.kind == "value" else BadEncoding
        raise kind(structure, spec.name, 2, str(exc)) from None
    return ItemRecord(tag, value, declared, partial_card_number)


def build_item_record(record: ItemRecord) -> bytes:
    """The record bytes a card returns for `record` (a partial card number stays partial)."""
    spec = ITEMS.get(record.tag)
    structure = "SSSE record"
    if spec is None:
        raise CannotBuild(structure, "tag", 0, f"tag {record.tag:02X} is not an item")
    if not 0 < record.declared_length <= 0xFF:
        raise CannotBuild(structure, "length", 1, f"length {record.declared_length}")
    size = record.declared_length
    if record.partial:
        if record.tag != 0x07 or record.declared_length <= spec.length:
            raise CannotBuild(structure, "partial", 1, "only a card number longer than 9 bytes is read partially")
        size = spec.length
    try:
        raw = _encode_value(spec, record.value, size)
    except codecs.FieldError as exc:
        raise CannotBuild(structure, spec.name, 2, str(exc)) from None
    if len(raw) != size:
        raise CannotBuild(structure, spec.name, 2, f"{len(raw)} bytes, the record declares {size}")
    wire: bytes = EF_RECORD.build({"tag": record.tag, "length": len(raw), "value": raw})
    return bytes((record.tag, record.declared_length)) + wire[2:]


def item(name: str, value: ItemValue, declared_length: int | None = None) -> ItemRecord:
    """A record for the item `name` at its nominal length (for virtual cards and tests)."""
    spec = ITEMS_BY_NAME[name]
    return ItemRecord(spec.tag, value, spec.length if declared_length is None else declared_length)


# --- generation, region, algorithm -----------------------------------------------------------------


class Generation(enum.IntEnum):
    """Card generation as read from the spec version (EF05 item 03)."""

    FIRST = 1
    SECOND = 2
    THIRD = 3

    @property
    def needs_psam(self) -> bool:
        """Third-generation cards open EF06 only after PSAM-backed authentication."""
        return self >= Generation.THIRD


def generation_from_version(version: str) -> Generation:
    """ "1.00" first, "2.00" second, "3.00" third generation.

    Follows the reader implementations: the first character decides; an empty or "0"-led
    version is treated as second generation (seen as "00" in one reader); anything above 3 is
    treated as third generation, the conservative choice since it asks for authentication.
    """
    first = version[:1]
    if first == "1":
        return Generation.FIRST
    if first in ("", "0", "2"):
        return Generation.SECOND
    if first.isdigit():
        return Generation.THIRD
    raise BadValue("EF05 record", "spec_version", 2, f"{version!r} is not a specification version")


def region_code(card_identification_code: bytes) -> str:
    """The 6-digit region (统筹区) code: the first 6 hex characters of the identification code."""
    if len(card_identification_code) < 3:
        raise TruncatedData("EF05 record", "card_identification_code", 2 + len(card_identification_code), "need 3")
    return card_identification_code[:3].hex().upper()


def algorithm_id(fci: Fci) -> int:
    """Algorithm id from `9F0C 03 86 01 xx` in the SSSE FCI, 01 when absent (as readers do)."""
    issuer = fci.issuer_data
    if issuer is None:
        return DEFAULT_ALGORITHM_ID
    found = find(parse_tlvs(issuer, "SSSE FCI 9F0C"), 0x86)
    if found is None:
        return DEFAULT_ALGORITHM_ID
    if len(found.value) != 1:
        raise BadLength("SSSE FCI 9F0C", "86", 0, f"algorithm id of {len(found.value)} bytes, expected 1")
    return found.value[0]


# --- APDU builders ---------------------------------------------------------------------------------


def select_ssse(with_le: bool = False) -> CommandApdu:
    """SELECT the SSSE by DF name; most readers send it without Le (cards then answer 611E)."""
    return CommandApdu(0x00, 0xA4, 0x04, 0x00, SSSE_DF_NAME, 256 if with_le else None)


def select_ef(file_id: bytes) -> CommandApdu:
    """SELECT an EF under the current DF (P1 02)."""
    return CommandApdu(0x00, 0xA4, 0x02, 0x00, file_id)


def read_item(tag: int, sfi: int | None = None) -> CommandApdu:
    """READ RECORD by identifier (form C): P1 = tag, P2 = 00 (current EF) or SFI<<3."""
    spec = ITEMS[tag]
    return CommandApdu(0x00, 0xB2, tag, 0x00 if sfi is None else sfi << 3, le=spec.le)


def get_challenge(length: int = 8) -> CommandApdu:
    return CommandApdu(0x00, 0x84, 0x00, 0x00, le=length)


def internal_authenticate(challenge: bytes, answer_length: int = 16) -> CommandApdu:
    return CommandApdu(0x00, 0x88, 0x00, 0x00, challenge, answer_length)


RKSSSE_KEY_ID = 0x0A


def external_authenticate(cryptogram: bytes, key_id: int = RKSSSE_KEY_ID) -> CommandApdu:
    return CommandApdu(0x00, 0x82, 0x00, key_id, cryptogram)
