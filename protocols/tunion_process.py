"""The 0x1E process record a terminal writes at each debit, built from what the terminal knows.

The record is the journey log other terminals read back (transfer discounts, pass-back), so
it has to be what the card reference lays down byte for byte (cards.md "0x1E process/journey
record"; T-Union Master docs and the Shanghai metro gate agree):

    0x00  1  transaction type
    0x01  8  terminal number, BCD: the PSAM's 6-byte terminal number right-aligned
    0x09  1  industry code (01 metro, 02 bus)
    0x0A  7  line (2 B BCD), station (2 B BCD), operator code (2 B BCD), RFU 00
    0x11  4  amount, big-endian fen
    0x15  4  balance after, big-endian fen: the card's own arithmetic, overdraft included
    0x19  7  time YYYYMMDDhhmmss BCD
    0x20  2  city code
    0x22  8  acquirer: the operator's institution, not the card's issuer
    0x2A  6  reserved 00

Nothing here reads configuration or a clock: the caller passes every value, and a value the
record cannot carry raises `CannotBuild` naming the field and its offset.
"""

from __future__ import annotations

import datetime as dt

from protocols.errors import CannotBuild
from protocols.tunion import PROCESS_RECORD_LAYOUT, ProcessRecord

PSAM_TERMINAL_NUMBER_LENGTH = 6
TERMINAL_FIELD_LENGTH = 8
LINE_STATION_CODE_DIGITS = 4

_OFFSETS = {
    "transaction_type": 0x00,
    "terminal_id": 0x01,
    "industry": 0x09,
    "line": 0x0A,
    "station": 0x0C,
    "operator_code": 0x0E,
    "amount": 0x11,
    "balance_after": 0x15,
    "time": 0x19,
    "city_code": 0x20,
    "acquirer": 0x22,
}


def _refuse(field: str, reason: str) -> CannotBuild:
    return CannotBuild(PROCESS_RECORD_LAYOUT.name, field, _OFFSETS[field], reason)


def _code_bcd(field: str, digits: str) -> bytes:
    """A line, station or operator code: up to 4 decimal digits, right-aligned in 2 bytes BCD."""
    if not isinstance(digits, str) or not digits.isascii() or (digits and not digits.isdigit()):
        raise _refuse(field, f"{digits!r} is not decimal digits")
    if len(digits) > LINE_STATION_CODE_DIGITS:
        raise _refuse(field, f"{len(digits)} digits exceed the {LINE_STATION_CODE_DIGITS} of 2 bytes BCD")
    return bytes.fromhex(digits.rjust(LINE_STATION_CODE_DIGITS, "0"))


def _byte(field: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFF:
        raise _refuse(field, f"{value!r} is not a byte")
    return value


def _fen(field: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse(field, f"{value!r} is not an amount in fen")
    if value < 0:
        raise _refuse(field, f"{value} is negative; the card's balance after a debit never is")
    if value > 0xFFFFFFFF:
        raise _refuse(field, f"{value} does not fit 4 bytes")
    return value


def _fixed(field: str, value: bytes, length: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        raise _refuse(field, f"{value!r} is not {length} bytes")
    return bytes(value)


def terminal_field(terminal_number: bytes) -> bytes:
    """The 8-byte BCD terminal field from the PSAM's 6-byte terminal number (its file 0x16).

    Right-aligned with 00, as the reference's example `00 00 30 00 89 00 03 40` shows.
    """
    raw = _fixed("terminal_id", terminal_number, PSAM_TERMINAL_NUMBER_LENGTH)
    if not raw.hex().isdigit():
        raise _refuse("terminal_id", f"PSAM terminal number {raw.hex().upper()} is not BCD")
    return raw.rjust(TERMINAL_FIELD_LENGTH, b"\x00")


def build_process_record(
    *,
    transaction_type: int,
    terminal_number: bytes,
    industry: int,
    line: str | bytes,
    station: str,
    operator_code: str,
    amount: int,
    balance_after: int,
    time: dt.datetime,
    city_code: bytes,
    acquirer: bytes,
) -> bytes:
    """The 48 bytes of the 0x1E record for one debit (UPDATE CAPP DATA CACHE 80 DC 00 F0 30).

    `terminal_number` is the PSAM's 6 bytes (what `psam_read_terminal_number` reads);
    `station` and `operator_code` are decimal codes of up to 4 digits, written BCD; `line`
    too, or the operator's own 2-byte code for it (operators encode lines differently, and
    what is written must read back the same way on the next tap); `balance_after`
    is the card's balance after the debit including the overdraft allowance, as INITIALIZE
    FOR PURCHASE reported it less the amount; `time` is the terminal's local wall-clock time
    (an aware value is written as its own wall time); `city_code` 2 bytes and `acquirer` the
    operator's 8-byte institution code, both from configuration.
    """
    if not isinstance(time, dt.datetime):
        raise _refuse("time", f"{time!r} is not a date and time")
    line_code = _fixed("line", line, 2) if isinstance(line, bytes) else _code_bcd("line", line)
    line_station = (
        line_code + _code_bcd("station", station) + _code_bcd("operator_code", operator_code) + b"\x00"
    )
    record = ProcessRecord(
        transaction_type=_byte("transaction_type", transaction_type),
        terminal_id=terminal_field(terminal_number),
        industry=_byte("industry", industry),
        line_station=line_station,
        amount=_fen("amount", amount),
        balance_after=_fen("balance_after", balance_after),
        time=time.replace(tzinfo=None),
        city_code=_fixed("city_code", city_code, 2),
        acquirer=_fixed("acquirer", acquirer, 8),
        reserved=bytes(6),
    )
    return PROCESS_RECORD_LAYOUT.build(record)


__all__ = ["build_process_record", "terminal_field"]
