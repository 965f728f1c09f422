"""BER-TLV as the cards use it (ISO 7816-4 / EMV): tags of 1 to 3 bytes, short and long lengths.

The tag and the length are construct constructs (`BerTag`, `BerLength`, `TlvHeader`); the
walk over a sequence of objects is a loop here because it must report the byte offset of
the object that breaks, which construct's greedy repeaters would swallow.

Lengths are accepted in any definite form a card sends (81 05 as well as 05); builds use the
shortest form, so round trips are exact for the minimal encodings these cards produce.
Padding bytes 00 and FF between objects (allowed by EMV) are rejected: none of these cards
send them and accepting them would hide truncation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import construct as c

from protocols.errors import BadLength, BadValue, CannotBuild, TrailingData, TruncatedData, UnexpectedTag


class _TagConstruct(c.Construct):  # type: ignore[misc]
    """A BER tag: low five bits 11111 announce subsequent bytes, each with b8 = more to come."""

    def _parse(self, stream: Any, context: Any, path: Any) -> int:
        first = c.stream_read(stream, 1, path)[0]
        value = first
        if first & 0x1F == 0x1F:
            while True:
                nxt = c.stream_read(stream, 1, path)[0]
                value = (value << 8) | nxt
                if not nxt & 0x80:
                    break
                if value > 0xFFFFFF:
                    raise c.ConstructError("tag longer than 3 bytes", path=path)
        return int(value)

    def _build(self, obj: int, stream: Any, context: Any, path: Any) -> int:
        c.stream_write(stream, tag_bytes(obj), len(tag_bytes(obj)), path)
        return obj

    def _sizeof(self, context: Any, path: Any) -> int:
        raise c.SizeofError("variable tag size", path=path)


class _LengthConstruct(c.Construct):  # type: ignore[misc]
    """A definite BER length: 00..7F, or 81..83 followed by that many length bytes."""

    def _parse(self, stream: Any, context: Any, path: Any) -> int:
        first = c.stream_read(stream, 1, path)[0]
        if first < 0x80:
            return int(first)
        count = first & 0x7F
        if count == 0 or count > 3:
            raise c.ConstructError(f"length form {first:02X} not supported", path=path)
        return int.from_bytes(c.stream_read(stream, count, path), "big")

    def _build(self, obj: int, stream: Any, context: Any, path: Any) -> int:
        raw = length_bytes(obj)
        c.stream_write(stream, raw, len(raw), path)
        return obj

    def _sizeof(self, context: Any, path: Any) -> int:
        raise c.SizeofError("variable length size", path=path)


BerTag: Any = _TagConstruct()
BerLength: Any = _LengthConstruct()
TlvHeader: Any = c.Struct("tag" / BerTag, "length" / BerLength)
TlvObject: Any = c.Struct("tag" / BerTag, "length" / BerLength, "value" / c.Bytes(c.this.length))


def tag_bytes(tag: int) -> bytes:
    """Encoding of `tag` (an int whose big-endian bytes are the tag, e.g. 0x9F0C)."""
    if not 0 <= tag <= 0xFFFFFF:
        raise CannotBuild("BER-TLV", "tag", 0, f"tag {tag:#x} out of range")
    raw = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    multi = raw[0] & 0x1F == 0x1F
    well_formed = (len(raw) == 1 and not multi) or (
        multi and len(raw) > 1 and all(b & 0x80 for b in raw[1:-1]) and not raw[-1] & 0x80
    )
    if not well_formed:
        raise CannotBuild("BER-TLV", "tag", 0, f"{raw.hex().upper()} is not a well-formed BER tag")
    return raw


def length_bytes(length: int) -> bytes:
    if length < 0 or length > 0xFFFFFF:
        raise CannotBuild("BER-TLV", "length", 0, f"length {length} out of range")
    if length < 0x80:
        return bytes((length,))
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def is_constructed(tag: int) -> bool:
    """Bit 6 of the first tag byte: the value is itself a sequence of TLV objects."""
    first = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")[0]
    return bool(first & 0x20)


@dataclass(frozen=True)
class Tlv:
    """One TLV object; `value` is raw, `children` parses it when the tag is constructed."""

    tag: int
    value: bytes

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)

    def children(self, structure: str = "BER-TLV", base_offset: int = 0) -> tuple[Tlv, ...]:
        return parse_tlvs(self.value, structure, base_offset)

    def to_bytes(self) -> bytes:
        return tag_bytes(self.tag) + length_bytes(len(self.value)) + self.value

    @classmethod
    def of(cls, tag: int, *children: Tlv) -> Tlv:
        """A constructed object holding `children` in order."""
        return cls(tag, build_tlvs(children))


@dataclass(frozen=True)
class TlvAt:
    """A parsed object and where its tag, length and value began in the parsed buffer."""

    tlv: Tlv
    offset: int
    value_offset: int


def iter_tlvs(data: bytes, structure: str = "BER-TLV", base_offset: int = 0) -> Iterator[TlvAt]:
    """Walk a sequence of TLV objects, reporting offsets relative to the outermost buffer."""
    pos = 0
    data = bytes(data)
    while pos < len(data):
        start = pos
        tag_len = 1
        if data[pos] & 0x1F == 0x1F:
            while True:
                if pos + tag_len >= len(data):
                    raise TruncatedData(structure, "tag", base_offset + len(data), "input ends inside a tag")
                more = data[pos + tag_len] & 0x80
                tag_len += 1
                if not more:
                    break
                if tag_len >= 3:
                    raise BadValue(structure, "tag", base_offset + start, "tag longer than 3 bytes")
        try:
            header = TlvHeader.parse(data[pos : pos + tag_len + 4])
        except c.StreamError:
            raise TruncatedData(structure, "length", base_offset + len(data), "input ends inside a length") from None
        except c.ConstructError as exc:
            raise BadLength(
                structure, "length", base_offset + pos + tag_len, str(exc).strip().splitlines()[-1]
            ) from None
        tag = int(header.tag)
        length = int(header.length)
        length_form = data[pos + tag_len]
        head = tag_len + 1 + (length_form & 0x7F if length_form >= 0x80 else 0)
        value_offset = pos + head
        end = value_offset + length
        if end > len(data):
            raise TruncatedData(
                structure,
                f"{tag:02X}",
                base_offset + len(data),
                f"length {length} needs {end - len(data)} more bytes",
            )
        yield TlvAt(Tlv(tag, data[value_offset:end]), base_offset + start, base_offset + value_offset)
        pos = end


def parse_tlvs(data: bytes, structure: str = "BER-TLV", base_offset: int = 0) -> tuple[Tlv, ...]:
    """All TLV objects of `data` in order."""
    return tuple(item.tlv for item in iter_tlvs(data, structure, base_offset))


def parse_tlv(data: bytes, structure: str = "BER-TLV", expected_tag: int | None = None) -> Tlv:
    """Exactly one TLV object filling `data`, optionally with the tag `expected_tag`."""
    if not data:
        raise TruncatedData(structure, "tag", 0, "empty input")
    first = next(iter_tlvs(data, structure))
    if expected_tag is not None and first.tlv.tag != expected_tag:
        raise UnexpectedTag(structure, "tag", 0, f"tag {first.tlv.tag:02X}, expected {expected_tag:02X}")
    size = len(first.tlv.value) + (first.value_offset - first.offset)
    if size != len(data):
        raise TrailingData(structure, "end", size, f"{len(data) - size} bytes after the object")
    return first.tlv


def build_tlvs(items: Iterable[Tlv]) -> bytes:
    return b"".join(item.to_bytes() for item in items)


def find(items: Iterable[Tlv], tag: int) -> Tlv | None:
    """The first object tagged `tag` at this level, or None."""
    for item in items:
        if item.tag == tag:
            return item
    return None


def find_path(items: Iterable[Tlv], *tags: int) -> Tlv | None:
    """Descend through constructed objects along `tags`; None if any step is absent."""
    current: Tlv | None = None
    level: Iterable[Tlv] = items
    for index, tag in enumerate(tags):
        current = find(level, tag)
        if current is None:
            return None
        if index + 1 < len(tags):
            level = current.children()
    return current
