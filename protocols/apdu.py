"""ISO 7816-4 command and response APDUs, short lengths only.

The command APDU's four cases are told apart by length alone, which a fixed construct struct
cannot express cleanly, so the header and the body are split here by hand and the rest of
the project sees only typed values: the terminal builds `CommandApdu` and sends `to_bytes()`,
the virtual card parses what it receives with `CommandApdu.parse`. Extended lengths are not
used by any of these cards and are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from protocols.errors import BadLength, BadValue, TrailingData, TruncatedData
from protocols.status import SW_OK, describe, raise_for_status

_CMD = "command APDU"
_RSP = "response APDU"


@dataclass(frozen=True)
class CommandApdu:
    """One command. `le` is the expected length 1..256 (256 travels as 00) or None for none."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise BadValue(_CMD, name, ("cla", "ins", "p1", "p2").index(name), f"{value} is not a byte")
        if len(self.data) > 255:
            raise BadLength(_CMD, "data", 5, f"{len(self.data)} bytes exceed a short Lc")
        if self.le is not None and not 1 <= self.le <= 256:
            raise BadValue(_CMD, "le", 5 + (1 + len(self.data) if self.data else 0), f"Le {self.le}")

    @property
    def case(self) -> int:
        """ISO 7816-3 case: 1 no data, 2 Le only, 3 data only, 4 data and Le."""
        if self.data:
            return 4 if self.le is not None else 3
        return 2 if self.le is not None else 1

    @property
    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))

    def with_le(self, le: int | None) -> CommandApdu:
        """The same command asking for `le` bytes (the resend after 6Cxx)."""
        return replace(self, le=le)

    def to_bytes(self) -> bytes:
        out = bytearray(self.header)
        if self.data:
            out.append(len(self.data))
            out += self.data
        if self.le is not None:
            out.append(self.le & 0xFF)
        return bytes(out)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @classmethod
    def parse(cls, raw: bytes) -> CommandApdu:
        """Split a short command APDU into its fields (the card's side of `to_bytes`)."""
        if len(raw) < 4:
            field = ("cla", "ins", "p1", "p2")[len(raw)]
            raise TruncatedData(_CMD, field, len(raw), f"{len(raw)} bytes, a header needs 4")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        lc = body[0]
        if lc == 0:
            raise BadLength(_CMD, "lc", 4, "Lc 00 (extended lengths are not supported)")
        if len(body) < 1 + lc:
            raise TruncatedData(_CMD, "data", len(raw), f"Lc {lc} but only {len(body) - 1} data bytes")
        data = bytes(body[1 : 1 + lc])
        rest = body[1 + lc :]
        if not rest:
            return cls(cla, ins, p1, p2, data)
        if len(rest) == 1:
            return cls(cla, ins, p1, p2, data, rest[0] or 256)
        raise TrailingData(_CMD, "le", 6 + lc, f"{len(rest) - 1} bytes after Le")


@dataclass(frozen=True)
class ResponseApdu:
    """One response: data and the two-byte status word as an int (0x9000)."""

    data: bytes
    sw: int

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    @property
    def ok(self) -> bool:
        return self.sw == SW_OK

    @property
    def meaning(self) -> str:
        return describe(self.sw).meaning

    def check(self, command: str) -> bytes:
        """The data if the status is 9000, else the typed `CardStatusError` naming `command`."""
        raise_for_status(self.sw, command)
        return self.data

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @classmethod
    def parse(cls, raw: bytes) -> ResponseApdu:
        if len(raw) < 2:
            raise TruncatedData(_RSP, "sw", len(raw), f"{len(raw)} bytes, a status word needs 2")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))

    @classmethod
    def success(cls, data: bytes = b"") -> ResponseApdu:
        return cls(data, SW_OK)


def select_by_name(aid: bytes) -> CommandApdu:
    """SELECT by DF name, first occurrence, asking for the FCI."""
    return CommandApdu(0x00, 0xA4, 0x04, 0x00, aid, 256)
