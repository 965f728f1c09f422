"""Field codecs shared by every structure, as construct adapters usable to parse and to build.

The card formats of the Chinese specifications come down to a handful of encodings:
- cn: BCD digits, left aligned, right-padded with nibble F (card numbers, region codes);
- n: BCD digits filling every nibble (terminal numbers, amounts in e-cash GET DATA);
- BCD dates YYYYMMDD and date-times YYYYMMDDhhmmss;
- an: ASCII, left aligned, right-padded with 00;
- GBK text (names), right-padded with 00.

Each adapter rejects what its encoding cannot hold with `FieldError`, which the layout
wrapper turns into a `ProtocolError` naming structure, field and offset. The typed helper
functions at the end serve code that decodes one value outside a struct.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import construct as c


class FieldError(c.ConstructError):  # type: ignore[misc]
    """A field value its encoding cannot hold; `kind` is "encoding" or "value"."""

    def __init__(self, message: str, kind: str = "encoding") -> None:
        super().__init__(message)
        self.kind = kind


def _nibbles(raw: bytes) -> list[int]:
    out: list[int] = []
    for byte in raw:
        out.append(byte >> 4)
        out.append(byte & 0x0F)
    return out


def decode_bcd(raw: bytes) -> str:
    """Digits of n-format BCD where every nibble is a digit."""
    nibbles = _nibbles(raw)
    for index, nibble in enumerate(nibbles):
        if nibble > 9:
            raise FieldError(f"nibble {nibble:X} at digit {index} is not BCD")
    return "".join(str(n) for n in nibbles)


def encode_bcd(digits: str, length: int) -> bytes:
    if len(digits) != 2 * length or not digits.isascii() or not digits.isdigit():
        raise FieldError(f"{digits!r} is not {2 * length} decimal digits", "value")
    return bytes.fromhex(digits)


def decode_cn(raw: bytes) -> str:
    """Digits of cn-format BCD: digits, then only F padding."""
    digits: list[str] = []
    padding = False
    for index, nibble in enumerate(_nibbles(raw)):
        if nibble == 0xF:
            padding = True
        elif nibble > 9:
            raise FieldError(f"nibble {nibble:X} at digit {index} is not BCD")
        elif padding:
            raise FieldError(f"digit after F padding at digit {index}")
        else:
            digits.append(str(nibble))
    return "".join(digits)


def encode_cn(digits: str, length: int) -> bytes:
    if len(digits) > 2 * length or not digits.isascii() or (digits and not digits.isdigit()):
        raise FieldError(f"{digits!r} is not at most {2 * length} decimal digits", "value")
    return bytes.fromhex(digits + "F" * (2 * length - len(digits)))


def decode_date(raw: bytes) -> dt.date | None:
    """YYYYMMDD in BCD; all zeros means "no date" (blank record)."""
    digits = decode_bcd(raw)
    if digits == "00000000":
        return None
    try:
        return dt.date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError as exc:
        raise FieldError(f"{digits} is not a date: {exc}", "value") from exc


def encode_date(value: dt.date | None) -> bytes:
    if value is None:
        return bytes(4)
    if not isinstance(value, dt.date):
        raise FieldError(f"{value!r} is not a date", "value")
    return bytes.fromhex(f"{value.year:04d}{value.month:02d}{value.day:02d}")


def decode_datetime(raw: bytes) -> dt.datetime | None:
    """YYYYMMDDhhmmss in BCD; all zeros means "no time" (blank record)."""
    digits = decode_bcd(raw)
    if digits == "0" * 14:
        return None
    try:
        return dt.datetime(
            int(digits[0:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            int(digits[12:14]),
        )
    except ValueError as exc:
        raise FieldError(f"{digits} is not a date and time: {exc}", "value") from exc


def encode_datetime(value: dt.datetime | None) -> bytes:
    if value is None:
        return bytes(7)
    if not isinstance(value, dt.datetime):
        raise FieldError(f"{value!r} is not a datetime", "value")
    return bytes.fromhex(value.strftime("%Y%m%d%H%M%S").rjust(14, "0"))


def _strip_zero_padding(raw: bytes) -> bytes:
    end = len(raw)
    while end and raw[end - 1] == 0:
        end -= 1
    body = raw[:end]
    if 0 in body:
        raise FieldError(f"00 inside the text at byte {body.index(0)}")
    return body


def decode_an(raw: bytes) -> str:
    """an: printable ASCII right-padded with 00."""
    body = _strip_zero_padding(raw)
    for index, byte in enumerate(body):
        if not 0x20 <= byte <= 0x7E:
            raise FieldError(f"byte {byte:02X} at {index} is not printable ASCII")
    return body.decode("ascii")


def encode_an(text: str, length: int) -> bytes:
    if not isinstance(text, str) or not all(0x20 <= ord(ch) <= 0x7E for ch in text):
        raise FieldError(f"{text!r} is not printable ASCII", "value")
    if len(text) > length:
        raise FieldError(f"{len(text)} characters exceed {length}", "value")
    return text.encode("ascii").ljust(length, b"\x00")


def decode_gbk(raw: bytes) -> str:
    """GBK text right-padded with 00."""
    body = _strip_zero_padding(raw)
    try:
        text = body.decode("gbk")
    except UnicodeDecodeError as exc:
        raise FieldError(f"not GBK at byte {exc.start}: {body[exc.start : exc.end].hex()}") from exc
    for index, ch in enumerate(text):
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise FieldError(f"control character {ord(ch):02X} at character {index}")
    return text


def encode_gbk(text: str, length: int) -> bytes:
    if not isinstance(text, str):
        raise FieldError(f"{text!r} is not text", "value")
    try:
        raw = text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise FieldError(f"{text!r} has no GBK encoding", "value") from exc
    if len(raw) > length or 0 in raw or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise FieldError(f"{text!r} does not fit {length} bytes of GBK text", "value")
    return raw.ljust(length, b"\x00")


class _Codec(c.Adapter):  # type: ignore[misc]
    """Adapter over fixed-size Bytes delegating to a decode and an encode function."""

    def __init__(self, length: int, decode: Any, encode: Any, kind: str) -> None:
        super().__init__(c.Bytes(length))
        self.length = length
        self.kind = kind
        self._length = length
        self._decode_fn = decode
        self._encode_fn = encode

    def _decode(self, obj: bytes, context: Any, path: Any) -> Any:
        return self._decode_fn(bytes(obj))

    def _encode(self, obj: Any, context: Any, path: Any) -> bytes:
        result: bytes = self._encode_fn(obj, self._length)
        return result


def Bcd(length: int) -> Any:
    """n-format BCD filling `length` bytes, as a digit string."""
    return _Codec(length, decode_bcd, encode_bcd, "bcd")


def Cn(length: int) -> Any:
    """cn-format BCD right-padded with F, as a digit string without the padding."""
    return _Codec(length, decode_cn, encode_cn, "cn")


def BcdDate() -> Any:
    """4-byte BCD YYYYMMDD as `datetime.date` (None for 00000000)."""
    return _Codec(4, decode_date, lambda value, _n: encode_date(value), "date")


def BcdDateTime() -> Any:
    """7-byte BCD YYYYMMDDhhmmss as `datetime.datetime` (None for all zeros)."""
    return _Codec(7, decode_datetime, lambda value, _n: encode_datetime(value), "datetime")


def An(length: int) -> Any:
    """an-format ASCII right-padded with 00, as str."""
    return _Codec(length, decode_an, encode_an, "an")


def Gbk(length: int) -> Any:
    """GBK text right-padded with 00, as str."""
    return _Codec(length, decode_gbk, encode_gbk, "gbk")


def Raw(length: int) -> Any:
    """`length` bytes kept as bytes (b-format fields)."""
    return c.Bytes(length)
