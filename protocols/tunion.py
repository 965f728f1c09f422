"""China T-Union transport e-purse (JT/T 978): files, purchase structures and APDU builders.

Every fixed structure is one `Layout` bound to a frozen record; `X_LAYOUT.parse` and
`X_LAYOUT.build` serve the terminal and the virtual card alike. Amounts are ints in fen
(cents), dates are `datetime.date`, BCD date-times `datetime.datetime`, binary fields bytes.

Byte layouts follow the card reference (sections 2.3 to 2.7). Where the reference marks a
layout as inferred, the field is kept raw (bytes) rather than interpreted, so that a card
that differs still parses and round-trips; the docstrings say which.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field, replace

import construct as c

from protocols.apdu import CommandApdu, select_by_name
from protocols.codecs import An as AnText
from protocols.codecs import Bcd, BcdDate, BcdDateTime, Gbk, Raw
from protocols.errors import BadChecksum
from protocols.layout import Layout, Lenient
from protocols.marks import PERSONAL

AID_TUNION_EP = bytes.fromhex("A000000632010105")
AID_TUNION_EC = bytes.fromhex("A000000632010106")
PPSE_LABEL = "MOT_T_EP"

SFI_PUBLIC = 0x15
SFI_HOLDER = 0x16
SFI_MANAGEMENT = 0x17
SFI_TRANSACTIONS = 0x18
SFI_CAPP = 0x1A
SFI_PROCESS = 0x1E

TRANSACTION_LOAD = 0x02
TRANSACTION_PURCHASE = 0x06
TRANSACTION_CAPP_PURCHASE = 0x09


# --- 0x15 public application information (30 bytes; also the 9F0C value of the FCI) --------------


@dataclass(frozen=True)
class PublicInfo:
    """File 0x15. `application_serial` is 20 BCD digits; the printed card number drops the first."""

    issuer_id: bytes
    application_type: int
    application_version: int
    application_serial: str
    start_date: dt.date | None
    expiry_date: dt.date | None
    issuer_fci: bytes

    @property
    def card_number(self) -> str:
        return self.application_serial[1:]

    @property
    def city_code(self) -> str:
        """Bytes 2-3 of the issuer id (Shanghai: 2900)."""
        return self.issuer_id[2:4].hex().upper()

    @property
    def serial_bytes(self) -> bytes:
        """The 8 bytes (file bytes 12-19) that diversify the purchase keys and enter MAC1."""
        return bytes.fromhex(self.application_serial)[2:]


PUBLIC_INFO_LAYOUT: Layout[PublicInfo] = Layout(
    "T-Union 0x15",
    PublicInfo,
    [
        ("issuer_id", Raw(8)),
        ("application_type", c.Int8ub),
        ("application_version", c.Int8ub),
        ("application_serial", Bcd(10)),
        ("start_date", BcdDate()),
        ("expiry_date", BcdDate()),
        ("issuer_fci", Raw(2)),
    ],
)


# --- 0x16 holder information (55 bytes) ------------------------------------------------------------


@dataclass(frozen=True)
class HolderInfo:
    """File 0x16. The name (GBK) and ID (ASCII) encodings are inferred; both are 00-padded.

    `holder_name` and `holder_id` are personal data.
    """

    card_type: int
    staff_flag: int
    holder_name: str = field(metadata=PERSONAL)
    holder_id: str = field(metadata=PERSONAL)
    holder_id_type: int


HOLDER_INFO_LAYOUT: Layout[HolderInfo] = Layout(
    "T-Union 0x16",
    HolderInfo,
    [
        ("card_type", c.Int8ub),
        ("staff_flag", c.Int8ub),
        ("holder_name", Gbk(20)),
        ("holder_id", AnText(32)),
        ("holder_id_type", c.Int8ub),
    ],
)


# --- 0x17 management information (60 bytes) --------------------------------------------------------


@dataclass(frozen=True)
class ManagementInfo:
    """File 0x17 (not the composite file). `interop_type` 0000 means not interoperable."""

    international_code: bytes
    province_code: bytes
    city_code: bytes
    interop_type: int
    card_kind: int
    reserved: bytes

    @property
    def interoperable(self) -> bool:
        return self.interop_type != 0


MANAGEMENT_INFO_LAYOUT: Layout[ManagementInfo] = Layout(
    "T-Union 0x17",
    ManagementInfo,
    [
        ("international_code", Raw(4)),
        ("province_code", Raw(2)),
        ("city_code", Raw(2)),
        ("interop_type", c.Int16ub),
        ("card_kind", c.Int8ub),
        ("reserved", Raw(49)),
    ],
)


# --- 0x18 transaction record (23 bytes) ------------------------------------------------------------


@dataclass(frozen=True)
class TransactionRecord:
    """One record of the cyclic file 0x18.

    Real logs are dirty: `terminal_id` is kept raw because it is often not BCD, and a
    date-time that is not a BCD date (or all zero) reads `time` None with its bytes kept in
    `time_raw`, so that one such record neither fails the read nor loses its other fields.
    """

    atc: int
    overdraft_limit: int
    amount: int
    transaction_type: int
    terminal_id: bytes
    time: dt.datetime | None
    time_raw: bytes | None = None

    @property
    def terminal_digits(self) -> str | None:
        """The terminal id as digits when it is BCD, else None (it stays in `terminal_id`)."""
        return bcd_digits(self.terminal_id)


def bcd_digits(raw: bytes) -> str | None:
    """`raw` as decimal digits when every nibble is one, else None: for display, never an error."""
    text = raw.hex()
    return text if text.isdigit() else None


TRANSACTION_RECORD_LAYOUT: Layout[TransactionRecord] = Layout(
    "T-Union 0x18",
    TransactionRecord,
    [
        ("atc", c.Int16ub),
        ("overdraft_limit", c.Int24ub),
        ("amount", c.Int32ub),
        ("transaction_type", c.Int8ub),
        ("terminal_id", Raw(6)),
        ("time", Lenient(BcdDateTime())),
    ],
)


# --- 0x1E process record (48 bytes) ----------------------------------------------------------------


@dataclass(frozen=True)
class ProcessRecord:
    """One record of the cyclic file 0x1E (journey log, written with UPDATE CAPP DATA CACHE).

    Read as leniently as 0x18: a terminal id that is not BCD stays raw, and a time that is not
    a BCD date reads None with its bytes in `time_raw`. A valid but implausible date (1990,
    from a terminal whose clock was never set) parses as it is: judging it is the caller's.
    """

    transaction_type: int
    terminal_id: bytes
    industry: int
    line_station: bytes
    amount: int
    balance_after: int
    time: dt.datetime | None
    city_code: bytes
    acquirer: bytes
    reserved: bytes
    time_raw: bytes | None = None

    @property
    def terminal_digits(self) -> str | None:
        """The terminal id as digits when it is BCD, else None."""
        return bcd_digits(self.terminal_id)


PROCESS_RECORD_LAYOUT: Layout[ProcessRecord] = Layout(
    "T-Union 0x1E",
    ProcessRecord,
    [
        ("transaction_type", c.Int8ub),
        ("terminal_id", Raw(8)),
        ("industry", c.Int8ub),
        ("line_station", Raw(7)),
        ("amount", c.Int32ub),
        ("balance_after", c.Int32ub),
        ("time", Lenient(BcdDateTime())),
        ("city_code", Raw(2)),
        ("acquirer", Raw(8)),
        ("reserved", Raw(6)),
    ],
)


# --- 0x1A CAPP record (128 bytes) ------------------------------------------------------------------

CAPP_RECORD_TAG = 0x27
CAPP_DATA_LENGTH = 125
"""The length byte of a 128-byte record: what follows the 3-byte header (0x7D on real cards)."""
CAPP_BODY_START = 5
CAPP_CRC_START = 6
CAPP_CRC_END = 124

CAPP_INDUSTRIES = {
    0x01: "rail",
    0x02: "bus",
    0x03: "water",
    0x04: "taxi",
    0x05: "car rental",
    0x06: "public bicycle",
    0x07: "parking",
    0x08: "coach",
    0x09: "ferry",
    0x0A: "intercity rail",
    0x0B: "air",
    0x0C: "toll road",
    0x0D: "discount",
    0x0E: "urban rail",
}
"""Record numbers of file 0x1A by industry (cards.md §2.3, after a bus terminal's struct)."""


@dataclass(frozen=True)
class CappRecord:
    """One 128-byte record of file 0x1A.

    The header is national: a 2-byte record identifier `27 xx` (xx the record number that
    UPDATE CAPP DATA CACHE names in P1), a 1-byte length of what follows (125), then the UN
    flag and the lock flag. The rest is the industry's and kept raw in `body` (bytes 5..123)
    plus `crc32` (bytes 124..127). Shanghai metro seals its rail record with a CRC32 over
    bytes 6..123 stored big-endian at 124..127; other cities' records carry no such CRC, so
    `shanghai_crc` says "valid" or "absent", never "wrong": a record without it is no error.
    """

    record_id: int
    record_length: int
    un_flag: int
    locked: int
    body: bytes
    crc32: int

    @property
    def record_tag(self) -> int:
        return self.record_id >> 8

    @property
    def record_number(self) -> int:
        """Byte 1: the record's number, what UPDATE CAPP DATA CACHE puts in P1."""
        return self.record_id & 0xFF

    @property
    def industry(self) -> str | None:
        return CAPP_INDUSTRIES.get(self.record_number)

    @property
    def length_ok(self) -> bool:
        return self.record_length == CAPP_DATA_LENGTH

    @property
    def crc_ok(self) -> bool:
        return capp_crc(self.body) == self.crc32

    @property
    def shanghai_crc(self) -> str:
        """ "valid" when bytes 124..127 hold Shanghai's CRC32, else "absent"."""
        return "valid" if self.crc_ok else "absent"

    def sealed(self) -> CappRecord:
        """The same record with Shanghai's CRC32, as the Shanghai metro gate writes it."""
        return replace(self, crc32=capp_crc(self.body))


def capp_crc(body: bytes) -> int:
    """Shanghai's CRC32 (zlib CRC-32) over record bytes 6..123, i.e. `body` after its first byte."""
    return zlib.crc32(body[CAPP_CRC_START - CAPP_BODY_START :]) & 0xFFFFFFFF


CAPP_RECORD_LAYOUT: Layout[CappRecord] = Layout(
    "T-Union 0x1A",
    CappRecord,
    [
        ("record_id", c.Int16ub),
        ("record_length", c.Int8ub),
        ("un_flag", c.Int8ub),
        ("locked", c.Int8ub),
        ("body", Raw(CAPP_CRC_END - CAPP_BODY_START)),
        ("crc32", c.Int32ub),
    ],
)


def parse_capp_record(data: bytes, verify_crc: bool = False) -> CappRecord:
    """Parse a 0x1A record. Only a Shanghai gate sets `verify_crc`: then no CRC is `BadChecksum`."""
    record = CAPP_RECORD_LAYOUT.parse(data)
    if verify_crc and not record.crc_ok:
        raise BadChecksum(
            CAPP_RECORD_LAYOUT.name,
            "crc32",
            CAPP_CRC_END,
            f"stored {record.crc32:08X}, computed {capp_crc(record.body):08X}",
        )
    return record


@dataclass(frozen=True)
class ShanghaiRailFields:
    """The Shanghai metro gate's fields of rail record 01 (SHM `Transport_GetFiles1A` offsets).

    Shanghai-local: other cities fill the record otherwise, so this view is informative only
    and every field is kept raw except the two BCD times, read leniently.
    """

    serial: bytes
    status: int
    entry_city: bytes
    exit_city: bytes
    entry_operator: bytes
    exit_operator: bytes
    entry_station: bytes
    exit_station: bytes
    entry_device: bytes
    exit_device: bytes
    entry_time: dt.datetime | None
    exit_time: dt.datetime | None
    max_amount: int
    entry_line: int
    exit_line: int
    entry_amount: int
    entry_balance: int
    actual_amount: int
    last_time: dt.datetime | None
    last_device: bytes
    month_amount: int
    month_count: int
    rfu: bytes
    entry_sign: int
    exit_sign: int
    entry_exit_status: int
    rfu2: bytes
    entry_time_raw: bytes | None = None
    exit_time_raw: bytes | None = None
    last_time_raw: bytes | None = None


SHANGHAI_RAIL_LAYOUT: Layout[ShanghaiRailFields] = Layout(
    "T-Union 0x1A Shanghai rail fields (bytes 6..123)",
    ShanghaiRailFields,
    [
        ("serial", Raw(8)),
        ("status", c.Int8ub),
        ("entry_city", Raw(2)),
        ("exit_city", Raw(2)),
        ("entry_operator", Raw(8)),
        ("exit_operator", Raw(8)),
        ("entry_station", Raw(8)),
        ("exit_station", Raw(8)),
        ("entry_device", Raw(8)),
        ("exit_device", Raw(8)),
        ("entry_time", Lenient(BcdDateTime())),
        ("exit_time", Lenient(BcdDateTime())),
        ("max_amount", c.Int32ub),
        ("entry_line", c.Int8ub),
        ("exit_line", c.Int8ub),
        ("entry_amount", c.Int32ub),
        ("entry_balance", c.Int32ub),
        ("actual_amount", c.Int32ub),
        ("last_time", Lenient(BcdDateTime())),
        ("last_device", Raw(4)),
        ("month_amount", c.Int24ub),
        ("month_count", c.Int16ub),
        ("rfu", Raw(5)),
        ("entry_sign", c.Int8ub),
        ("exit_sign", c.Int8ub),
        ("entry_exit_status", c.Int8ub),
        ("rfu2", Raw(1)),
    ],
)


def shanghai_rail_fields(record: CappRecord) -> ShanghaiRailFields:
    """Bytes 6..123 of a rail record read with the Shanghai gate's field map (never fails)."""
    return SHANGHAI_RAIL_LAYOUT.parse(record.body[CAPP_CRC_START - CAPP_BODY_START :])


# --- GET BALANCE -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Balance:
    """GET BALANCE answer: 4 bytes big-endian. Some cards set bit 31; `amount` ignores it."""

    raw: int

    @property
    def amount(self) -> int:
        return self.raw & 0x7FFFFFFF


BALANCE_LAYOUT: Layout[Balance] = Layout("GET BALANCE answer", Balance, [("raw", c.Int32ub)])


# --- INITIALIZE FOR PURCHASE -----------------------------------------------------------------------


@dataclass(frozen=True)
class InitPurchaseRequest:
    """Data of INITIALIZE FOR (CAPP) PURCHASE: key index, amount, PSAM terminal number."""

    key_index: int
    amount: int
    terminal_id: bytes


INIT_PURCHASE_REQUEST_LAYOUT: Layout[InitPurchaseRequest] = Layout(
    "INITIALIZE FOR PURCHASE data",
    InitPurchaseRequest,
    [("key_index", c.Int8ub), ("amount", c.Int32ub), ("terminal_id", Raw(6))],
)


@dataclass(frozen=True)
class InitPurchaseAnswer:
    """INITIALIZE FOR PURCHASE answer. `balance` includes the overdraft limit."""

    balance: int
    offline_atc: int
    overdraft_limit: int
    key_version: int
    algorithm_id: int
    card_random: bytes

    @property
    def usable_balance(self) -> int:
        return self.balance - self.overdraft_limit


INIT_PURCHASE_ANSWER_LAYOUT: Layout[InitPurchaseAnswer] = Layout(
    "INITIALIZE FOR PURCHASE answer",
    InitPurchaseAnswer,
    [
        ("balance", c.Int32ub),
        ("offline_atc", c.Int16ub),
        ("overdraft_limit", c.Int24ub),
        ("key_version", c.Int8ub),
        ("algorithm_id", c.Int8ub),
        ("card_random", Raw(4)),
    ],
)


# --- PSAM MAC1 (80 70) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mac1Input:
    """The 36 bytes sent to the PSAM with 80 70 to obtain the terminal sequence and MAC1."""

    card_random: bytes
    offline_atc: int
    amount: int
    transaction_type: int
    time: dt.datetime | None
    key_version: int
    algorithm_id: int
    card_serial: bytes
    issuer_id: bytes


MAC1_INPUT_LAYOUT: Layout[Mac1Input] = Layout(
    "MAC1 input",
    Mac1Input,
    [
        ("card_random", Raw(4)),
        ("offline_atc", c.Int16ub),
        ("amount", c.Int32ub),
        ("transaction_type", c.Int8ub),
        ("time", BcdDateTime()),
        ("key_version", c.Int8ub),
        ("algorithm_id", c.Int8ub),
        ("card_serial", Raw(8)),
        ("issuer_id", Raw(8)),
    ],
)


@dataclass(frozen=True)
class Mac1Answer:
    """PSAM answer to 80 70: terminal transaction sequence number and MAC1."""

    terminal_sequence: int
    mac1: bytes


MAC1_ANSWER_LAYOUT: Layout[Mac1Answer] = Layout(
    "MAC1 answer", Mac1Answer, [("terminal_sequence", c.Int32ub), ("mac1", Raw(4))]
)


# --- DEBIT FOR PURCHASE / GET TRANSACTION PROOF ----------------------------------------------------


@dataclass(frozen=True)
class DebitRequest:
    """Data of DEBIT FOR (CAPP) PURCHASE: terminal sequence, date and time (BCD), MAC1."""

    terminal_sequence: int
    time: dt.datetime | None
    mac1: bytes


DEBIT_REQUEST_LAYOUT: Layout[DebitRequest] = Layout(
    "DEBIT FOR PURCHASE data",
    DebitRequest,
    [("terminal_sequence", c.Int32ub), ("time", BcdDateTime()), ("mac1", Raw(4))],
)


@dataclass(frozen=True)
class DebitAnswer:
    """DEBIT FOR PURCHASE answer: TAC then MAC2."""

    tac: bytes
    mac2: bytes


DEBIT_ANSWER_LAYOUT: Layout[DebitAnswer] = Layout(
    "DEBIT FOR PURCHASE answer", DebitAnswer, [("tac", Raw(4)), ("mac2", Raw(4))]
)


@dataclass(frozen=True)
class TransactionProofAnswer:
    """GET TRANSACTION PROOF answer: MAC2 then TAC (the reverse of the DEBIT answer)."""

    mac2: bytes
    tac: bytes


TRANSACTION_PROOF_ANSWER_LAYOUT: Layout[TransactionProofAnswer] = Layout(
    "GET TRANSACTION PROOF answer", TransactionProofAnswer, [("mac2", Raw(4)), ("tac", Raw(4))]
)


@dataclass(frozen=True)
class TransactionProofRequest:
    """Data of GET TRANSACTION PROOF: the offline ATC of the torn transaction plus one."""

    atc: int


TRANSACTION_PROOF_REQUEST_LAYOUT: Layout[TransactionProofRequest] = Layout(
    "GET TRANSACTION PROOF data", TransactionProofRequest, [("atc", c.Int16ub)]
)


@dataclass(frozen=True)
class TerminalNumber:
    """The PSAM's 6-byte terminal number (its file 0x16)."""

    terminal_id: bytes


TERMINAL_NUMBER_LAYOUT: Layout[TerminalNumber] = Layout(
    "PSAM terminal number", TerminalNumber, [("terminal_id", Raw(6))]
)


@dataclass(frozen=True)
class Mac2Request:
    """Data of the PSAM's 80 72: the card's MAC2."""

    mac2: bytes


MAC2_REQUEST_LAYOUT: Layout[Mac2Request] = Layout("MAC2 verification data", Mac2Request, [("mac2", Raw(4))])


# --- APDU builders ---------------------------------------------------------------------------------


def select_tunion(aid: bytes = AID_TUNION_EP) -> CommandApdu:
    return select_by_name(aid)


def read_binary_sfi(sfi: int, length: int = 256, offset: int = 0) -> CommandApdu:
    """READ BINARY with the short file identifier in P1 (b8 set)."""
    return CommandApdu(0x00, 0xB0, 0x80 | sfi, offset, le=length)


def read_record_sfi(sfi: int, record: int, length: int = 256) -> CommandApdu:
    """READ RECORD `record` (number) of the file `sfi`."""
    return CommandApdu(0x00, 0xB2, record, (sfi << 3) | 0x04, le=length)


def get_balance(include_overdraft: bool = True) -> CommandApdu:
    """GET BALANCE of the e-purse; P1 00 includes the overdraft, 03 excludes it."""
    return CommandApdu(0x80, 0x5C, 0x00 if include_overdraft else 0x03, 0x02, le=4)


def initialize_for_purchase(request: InitPurchaseRequest, capp: bool = True) -> CommandApdu:
    """INITIALIZE FOR CAPP PURCHASE (P1 03) or simple PURCHASE (P1 01) on the e-purse."""
    data = INIT_PURCHASE_REQUEST_LAYOUT.build(request)
    return CommandApdu(0x80, 0x50, 0x03 if capp else 0x01, 0x02, data, 0x0F)


def update_capp_data_cache(sfi: int, record_id: int, record: bytes) -> CommandApdu:
    """UPDATE CAPP DATA CACHE: P1 record id (00 appends to a cyclic file), P2 SFI<<3."""
    return CommandApdu(0x80, 0xDC, record_id, sfi << 3, record)


def debit_for_purchase(request: DebitRequest) -> CommandApdu:
    return CommandApdu(0x80, 0x54, 0x01, 0x00, DEBIT_REQUEST_LAYOUT.build(request), 0x08)


def get_transaction_proof(atc: int, transaction_type: int = TRANSACTION_CAPP_PURCHASE) -> CommandApdu:
    """GET TRANSACTION PROOF for the transaction whose ATC is `atc` (INITIALIZE's ATC + 1)."""
    data = TRANSACTION_PROOF_REQUEST_LAYOUT.build(TransactionProofRequest(atc))
    return CommandApdu(0x80, 0x5A, 0x00, transaction_type, data, 0x08)


def psam_read_terminal_number() -> CommandApdu:
    return read_binary_sfi(0x16, 6)


PSAM_PURCHASE_DF = bytes.fromhex("8011")
"""MOT PSAM purchase ADF as selected by the Shanghai metro gate; others use DF01 or 1001."""


def psam_select_purchase_app(file_id: bytes = PSAM_PURCHASE_DF) -> CommandApdu:
    """SELECT the PSAM purchase application by file identifier (configurable per PSAM issuer)."""
    return CommandApdu(0x00, 0xA4, 0x00, 0x00, file_id)


def psam_init_for_purchase(mac1_input: Mac1Input) -> CommandApdu:
    """80 70: MAC1 and the terminal sequence number for the 36-byte input."""
    return CommandApdu(0x80, 0x70, 0x00, 0x00, MAC1_INPUT_LAYOUT.build(mac1_input), 0x08)


def psam_verify_mac2(mac2: bytes) -> CommandApdu:
    """80 72: the PSAM checks the card's MAC2."""
    return CommandApdu(0x80, 0x72, 0x00, 0x00, MAC2_REQUEST_LAYOUT.build(Mac2Request(mac2)))
