"""UnionPay e-cash on the same card: balance and limits by GET DATA, never by GPO.

GET PROCESSING OPTIONS increments the card's transaction counter (the card locks at 65535),
so a terminal that only shows a balance must use GET DATA (80 CA) on the tags below. This
module has no builder for GPO on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.apdu import CommandApdu, select_by_name
from protocols.codecs import FieldError, decode_bcd, encode_bcd
from protocols.errors import BadEncoding, BadLength, CannotBuild, UnexpectedTag
from protocols.exchange import Transmit, exchange
from protocols.fci import DirectoryEntry
from protocols.ppse import read_ppse
from protocols.status import APPLICATION_UNUSABLE, DATA_ABSENT, raise_for_status
from protocols.tlv import Tlv, parse_tlv

AID_UNIONPAY_DEBIT = bytes.fromhex("A000000333010101")
AID_UNIONPAY_CREDIT = bytes.fromhex("A000000333010102")
AID_UNIONPAY_QUASI_CREDIT = bytes.fromhex("A000000333010103")
AID_UNIONPAY_ECASH = bytes.fromhex("A000000333010106")
UNIONPAY_AIDS = (AID_UNIONPAY_DEBIT, AID_UNIONPAY_CREDIT, AID_UNIONPAY_QUASI_CREDIT, AID_UNIONPAY_ECASH)
UNIONPAY_RID = bytes.fromhex("A000000333")

TAG_BALANCE = 0x9F79
TAG_SINGLE_LIMIT = 0x9F78
TAG_BALANCE_LIMIT = 0x9F77
TAG_RESET_THRESHOLD = 0x9F6D
TAG_OFFLINE_AVAILABLE = 0x9F5D
AMOUNT_TAGS = (TAG_BALANCE, TAG_SINGLE_LIMIT, TAG_BALANCE_LIMIT, TAG_RESET_THRESHOLD, TAG_OFFLINE_AVAILABLE)


def get_data(tag: int) -> CommandApdu:
    """GET DATA for a two-byte tag."""
    return CommandApdu(0x80, 0xCA, tag >> 8, tag & 0xFF, le=256)


def parse_amount(data: bytes, expected_tag: int | None = None) -> tuple[int, int]:
    """A GET DATA answer `tag 06 n12`: (tag, amount in fen)."""
    structure = "GET DATA answer"
    obj = parse_tlv(data, structure)
    if obj.tag not in AMOUNT_TAGS or (expected_tag is not None and obj.tag != expected_tag):
        wanted = "an amount tag" if expected_tag is None else f"{expected_tag:04X}"
        raise UnexpectedTag(structure, "tag", 0, f"tag {obj.tag:02X}, expected {wanted}")
    value_offset = len(data) - len(obj.value)
    tag_size = 2 if obj.tag > 0xFF else 1
    if value_offset != tag_size + 1:
        # BER allows a long-form length (81 06); the answer is fixed as `tag 06 n12`, as cards send it.
        raise BadLength(structure, "length", tag_size, "long-form length; the answer is tag 06 n12")
    if len(obj.value) != 6:
        raise BadLength(structure, f"{obj.tag:04X}", value_offset - 1, f"{len(obj.value)} bytes, n12 needs 6")
    try:
        digits = decode_bcd(obj.value)
    except FieldError as exc:
        raise BadEncoding(structure, f"{obj.tag:04X}", value_offset, str(exc)) from None
    return obj.tag, int(digits)


def build_amount(tag: int, amount: int) -> bytes:
    """The answer a card gives to GET DATA `tag` holding `amount` fen."""
    if tag not in AMOUNT_TAGS:
        raise CannotBuild("GET DATA answer", "tag", 0, f"{tag:04X} is not an amount tag")
    try:
        value = encode_bcd(f"{amount:012d}", 6)
    except FieldError as exc:
        raise CannotBuild("GET DATA answer", f"{tag:04X}", 3, str(exc)) from None
    return Tlv(tag, value).to_bytes()


@dataclass(frozen=True)
class ECashImage:
    """E-cash amounts in fen; None where the card refused GET DATA for the tag."""

    aid: bytes
    balance: int | None
    single_transaction_limit: int | None
    balance_limit: int | None
    reset_threshold: int | None
    offline_available: int | None


def _amount(transmit: Transmit, tag: int) -> int | None:
    response = exchange(transmit, get_data(tag))
    if response.sw in DATA_ABSENT:
        return None
    raise_for_status(response.sw, f"GET DATA {tag:04X}")
    return parse_amount(response.data, tag)[1]


def read_ecash(
    transmit: Transmit,
    aids: tuple[bytes, ...] = UNIONPAY_AIDS,
    directory: tuple[DirectoryEntry, ...] | None = None,
) -> ECashImage | None:
    """PPSE first (UnionPay entries by priority), then the AID list; None without UnionPay.

    `directory` is the PPSE directory when the caller already read it (one SELECT PPSE per tap).
    """
    entries = read_ppse(transmit) if directory is None else directory
    candidates = [e.aid for e in entries if e.aid.startswith(UNIONPAY_RID)]
    candidates += [aid for aid in aids if aid not in candidates]
    for aid in candidates:
        response = exchange(transmit, select_by_name(aid))
        if response.sw in APPLICATION_UNUSABLE:
            continue
        raise_for_status(response.sw, "SELECT UnionPay")
        return ECashImage(
            aid,
            _amount(transmit, TAG_BALANCE),
            _amount(transmit, TAG_SINGLE_LIMIT),
            _amount(transmit, TAG_BALANCE_LIMIT),
            _amount(transmit, TAG_RESET_THRESHOLD),
            _amount(transmit, TAG_OFFLINE_AVAILABLE),
        )
    return None
