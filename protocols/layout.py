"""Fixed-size wire structures: one construct struct, a typed record, and exact error reports.

Every fixed layout (a T-Union file, a command's data field, an answer) is declared once as
an ordered list of (field name, construct) and bound to a frozen dataclass with the same
field names. The same object parses (terminal) and builds (virtual card); build(parse(x))
is x byte for byte because every field keeps its raw form or decodes losslessly.

The compiled struct parses the well-formed case fast. When anything fails, each field is
parsed again on its own slice, which pins the error to a field and its byte offset, and the
error leaves as a `ProtocolError`, never as a construct exception.

A field wrapped in `Lenient` is one that real cards get wrong without the rest of the
structure being wrong (the date-time of a log record written by a terminal whose clock was
never set): when its bytes do not decode, the record keeps every other field, the lenient
field reads None and its raw bytes go to the record's `<field>_raw`, so that the record still
rebuilds to the same bytes and `problems()` can say why the field was unreadable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import construct as c

from protocols.codecs import FieldError
from protocols.errors import BadEncoding, BadValue, CannotBuild, TrailingData, TruncatedData

T = TypeVar("T")

_BUILD_ERRORS = (c.ConstructError, TypeError, ValueError, OverflowError, AttributeError)
_PARSE_ERRORS = (c.ConstructError, ValueError, TypeError)


class Lenient:
    """A field whose undecodable bytes make it unknown (None, raw bytes kept), not an error."""

    def __init__(self, subcon: Any) -> None:
        self.subcon = subcon

    def sizeof(self) -> int:
        return int(self.subcon.sizeof())


@dataclasses.dataclass(frozen=True)
class FieldProblem:
    """Why a lenient field could not be read: where it sits, its raw bytes, the decoder's reason."""

    field: str
    offset: int
    raw: bytes
    reason: str


@dataclasses.dataclass(frozen=True)
class FieldSpan:
    """Where a field sits in its structure."""

    name: str
    offset: int
    size: int


class Layout(Generic[T]):
    """A fixed-size structure named `name`, parsed into and built from records of `record`."""

    def __init__(self, name: str, record: type[T], fields: Sequence[tuple[str, Any]]) -> None:
        self.name = name
        self.record = record
        self._lenient: dict[str, Any] = {n: sc.subcon for n, sc in fields if isinstance(sc, Lenient)}
        self._subcons: list[tuple[str, Any]] = [(n, sc.subcon if isinstance(sc, Lenient) else sc) for n, sc in fields]
        spans: list[FieldSpan] = []
        offset = 0
        for field_name, subcon in self._subcons:
            size = int(subcon.sizeof())
            spans.append(FieldSpan(field_name, offset, size))
            offset += size
        self.spans: tuple[FieldSpan, ...] = tuple(spans)
        self.size = offset
        record_fields = [f.name for f in dataclasses.fields(record)]  # type: ignore[arg-type]
        if record_fields[: len(spans)] != [s.name for s in spans]:
            raise TypeError(f"{record.__name__} fields do not match layout {name}")
        for lenient in self._lenient:
            if f"{lenient}_raw" not in record_fields:
                raise TypeError(f"{record.__name__} has no {lenient}_raw for the lenient field of layout {name}")
        # Lenient fields go through the compiled struct as plain bytes and are decoded after.
        wire = [
            (n, c.Bytes(span.size) if n in self._lenient else sc)
            for (n, sc), span in zip(self._subcons, spans, strict=True)
        ]
        self.struct: Any = c.Struct(*(n / sc for n, sc in self._subcons))
        self._compiled: Any = c.Struct(*(n / sc for n, sc in wire)).compile()

    @property
    def fields(self) -> tuple[tuple[str, Any], ...]:
        """(name, construct) pairs in wire order."""
        return tuple(self._subcons)

    def span(self, field: str) -> FieldSpan:
        for span in self.spans:
            if span.name == field:
                return span
        raise KeyError(field)

    def field_at(self, offset: int) -> str:
        for span in self.spans:
            if span.offset <= offset < span.offset + span.size:
                return span.name
        return "end"

    def parse(self, data: bytes) -> T:
        """Parse exactly `self.size` bytes into a record."""
        data = bytes(data)
        if len(data) < self.size:
            field = self.field_at(len(data))
            raise TruncatedData(self.name, field, len(data), f"{len(data)} bytes, the structure has {self.size}")
        if len(data) > self.size:
            raise TrailingData(self.name, "end", self.size, f"{len(data) - self.size} bytes beyond {self.size}")
        try:
            container = self._compiled.parse(data)
        except _PARSE_ERRORS:
            self._locate_parse_error(data)
            raise  # pragma: no cover - _locate_parse_error always raises
        values = {span.name: container[span.name] for span in self.spans}
        for field_name, subcon in self._lenient.items():
            chunk = bytes(values[field_name])
            try:
                values[field_name] = subcon.parse(chunk)
            except _PARSE_ERRORS:
                values[field_name] = None
                values[f"{field_name}_raw"] = chunk
        return self.record(**values)

    def problems(self, record: T) -> tuple[FieldProblem, ...]:
        """The lenient fields of `record` that could not be read, with the decoder's reason."""
        out: list[FieldProblem] = []
        for field_name, subcon in self._lenient.items():
            raw = getattr(record, f"{field_name}_raw")
            if raw is None:
                continue
            try:
                subcon.parse(raw)
            except _PARSE_ERRORS as exc:
                reason = _message(exc)
            else:
                reason = "kept raw"
            out.append(FieldProblem(field_name, self.span(field_name).offset, bytes(raw), reason))
        return tuple(out)

    def _locate_parse_error(self, data: bytes) -> None:
        for (field_name, subcon), span in zip(self._subcons, self.spans, strict=True):
            if field_name in self._lenient:
                continue
            chunk = data[span.offset : span.offset + span.size]
            try:
                subcon.parse(chunk)
            except FieldError as exc:
                kind = BadValue if exc.kind == "value" else BadEncoding
                raise kind(self.name, field_name, span.offset, _message(exc)) from None
            except (c.ConstructError, ValueError, TypeError) as exc:
                raise BadValue(self.name, field_name, span.offset, _message(exc)) from None
        raise BadValue(self.name, "?", 0, "unparseable")

    def build(self, record: T) -> bytes:
        """Encode a record; values the format cannot carry raise `CannotBuild` naming the field."""
        out = bytearray()
        for (field_name, subcon), span in zip(self._subcons, self.spans, strict=True):
            value = getattr(record, field_name)
            raw = getattr(record, f"{field_name}_raw", None) if field_name in self._lenient else None
            if value is None and raw is not None:
                chunk = bytes(raw)
                if len(chunk) != span.size:
                    raise CannotBuild(
                        self.name, field_name, span.offset, f"{len(chunk)} raw bytes, expected {span.size}"
                    )
                out += chunk
                continue
            try:
                chunk = subcon.build(value)
            except _BUILD_ERRORS as exc:
                raise CannotBuild(self.name, field_name, span.offset, _message(exc)) from None
            if len(chunk) != span.size:
                raise CannotBuild(self.name, field_name, span.offset, f"{len(chunk)} bytes, expected {span.size}")
            out += chunk
        return bytes(out)


def _message(exc: BaseException) -> str:
    """The useful last line of a construct message (without its "Error in path" preamble)."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
