"""Reading the T-Union e-purse: discovery, FCI, files, balance, logs.

Discovery goes through the PPSE (entry labelled MOT_T_EP) and falls back to SELECT of the
national AID. The public information file 0x15 is taken from the FCI's 9F0C when the card
puts it there (saving a READ BINARY on the validator's time budget), else read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocols.errors import BadLength
from protocols.exchange import Transmit, command, exchange
from protocols.fci import DirectoryEntry, Fci, parse_fci
from protocols.ppse import read_ppse
from protocols.status import (
    APPLICATION_ABSENT,
    APPLICATION_UNUSABLE,
    FILE_ABSENT,
    RECORD_ABSENT,
    ApplicationBlocked,
    ApplicationLocked,
    raise_for_status,
)
from protocols.tunion import (
    AID_TUNION_EP,
    BALANCE_LAYOUT,
    CAPP_RECORD_LAYOUT,
    HOLDER_INFO_LAYOUT,
    MANAGEMENT_INFO_LAYOUT,
    PPSE_LABEL,
    PROCESS_RECORD_LAYOUT,
    PUBLIC_INFO_LAYOUT,
    SFI_CAPP,
    SFI_HOLDER,
    SFI_MANAGEMENT,
    SFI_PROCESS,
    SFI_PUBLIC,
    SFI_TRANSACTIONS,
    TRANSACTION_RECORD_LAYOUT,
    CappRecord,
    HolderInfo,
    ManagementInfo,
    ProcessRecord,
    PublicInfo,
    TransactionRecord,
    get_balance,
    read_binary_sfi,
    read_record_sfi,
    select_tunion,
)


@dataclass(frozen=True)
class TUnionImage:
    """What the T-Union application gave. Holder data (0x16) carries its own personal marks."""

    aid: bytes
    public: PublicInfo
    balance: int | None
    management: ManagementInfo | None = None
    holder: HolderInfo | None = None
    transactions: tuple[TransactionRecord, ...] = ()
    process_records: tuple[ProcessRecord, ...] = ()
    capp_records: tuple[CappRecord, ...] = ()


class PurseState(enum.Enum):
    """Whether the e-purse can be used, as a validator must tell the holder."""

    USABLE = "usable"
    ABSENT = "absent"
    """SELECT answered 6A82: the card carries no T-Union application."""
    LOCKED = "locked"
    """9303: permanently locked by its issuer (blacklisted)."""
    BLOCKED = "blocked"
    """6283 / 6A81: blocked (temporarily invalidated)."""


@dataclass(frozen=True)
class PurseRead:
    """What a validator needs of the e-purse before it decides, read once per tap."""

    state: PurseState
    public: PublicInfo | None = None
    """File 0x15 (from the FCI where the card puts it there); None unless USABLE."""
    balance: int | None = None
    """The purse's own money (GET BALANCE P1 03); None when not read (INITIALIZE will answer it)."""
    allowance: int | None = None
    """The overdraft allowance the card counts into the balance INITIALIZE answers with."""
    process_records: tuple[ProcessRecord, ...] = ()
    """The newest records of the journey log 0x1E, newest first (record 1 of the cyclic file)."""
    management: ManagementInfo | None = None
    """File 0x17 (interoperability flag, card type), when asked for and the card has it."""


def read_purse(
    transmit: Transmit,
    *,
    process_records: int = 0,
    management: bool = False,
    balances: bool = True,
    aid: bytes = AID_TUNION_EP,
) -> PurseRead:
    """SELECT the e-purse and read its public file, both balances and `process_records` of 0x1E.

    `management` reads file 0x17 too (one READ BINARY), for issuer and card-type rules.
    `balances` False skips both GET BALANCE: a terminal that charges learns the balance, the
    allowance and whether the purse can pay from INITIALIZE FOR PURCHASE itself (9401).

    A purse that is absent, locked or blocked is a state of the answer, not an error: the
    validator refuses such a card with a reason of its own. Every other refusal raises its
    `CardStatusError`, and a malformed answer its `ProtocolError`.
    """
    response = exchange(transmit, select_tunion(aid))
    if response.sw in APPLICATION_ABSENT:
        return PurseRead(PurseState.ABSENT)
    try:
        raise_for_status(response.sw, "SELECT T-Union")
    except ApplicationLocked:
        return PurseRead(PurseState.LOCKED)
    except ApplicationBlocked:
        return PurseRead(PurseState.BLOCKED)
    public = public_info(transmit, parse_fci(response.data, "T-Union FCI"))
    own = allowance = None
    if balances:
        own = read_balance(transmit, include_overdraft=False)
        allowance = max(0, read_balance(transmit) - own)
    raw = _records(transmit, SFI_PROCESS, process_records, PROCESS_RECORD_LAYOUT.size, absent=RECORD_ABSENT)
    info = _optional_binary(transmit, SFI_MANAGEMENT, MANAGEMENT_INFO_LAYOUT.size) if management else None
    return PurseRead(
        PurseState.USABLE,
        public,
        own,
        allowance,
        tuple(PROCESS_RECORD_LAYOUT.parse(record) for record in raw),
        MANAGEMENT_INFO_LAYOUT.parse(info) if info is not None else None,
    )


def find_tunion_aid(transmit: Transmit, directory: tuple[DirectoryEntry, ...] | None = None) -> bytes:
    """The AID announced in the PPSE under label MOT_T_EP, else the national EP AID."""
    for entry in read_ppse(transmit) if directory is None else directory:
        if entry.label == PPSE_LABEL:
            return entry.aid
    return AID_TUNION_EP


def select(transmit: Transmit, aid: bytes = AID_TUNION_EP) -> Fci:
    """SELECT the T-Union ADF and return its FCI (raises `FileNotFound` without one)."""
    return parse_fci(command(transmit, select_tunion(aid), "SELECT T-Union"), "T-Union FCI")


def public_info(transmit: Transmit, fci: Fci) -> PublicInfo:
    """File 0x15 from FCI 9F0C when it has the 30 bytes, else by READ BINARY."""
    issuer = fci.issuer_data
    if issuer is not None and len(issuer) == PUBLIC_INFO_LAYOUT.size:
        return PUBLIC_INFO_LAYOUT.parse(issuer)
    return PUBLIC_INFO_LAYOUT.parse(
        command(transmit, read_binary_sfi(SFI_PUBLIC, PUBLIC_INFO_LAYOUT.size), "READ BINARY 15")
    )


def _optional_binary(transmit: Transmit, sfi: int, size: int) -> bytes | None:
    response = exchange(transmit, read_binary_sfi(sfi, size))
    if response.sw in FILE_ABSENT:
        return None
    raise_for_status(response.sw, f"READ BINARY {sfi:02X}")
    return response.data


def _records(
    transmit: Transmit, sfi: int, count: int, size: int, absent: frozenset[int] = FILE_ABSENT
) -> list[bytes]:
    """Records 1..`count` of a record file, up to the first that the card says is absent."""
    out: list[bytes] = []
    for number in range(1, count + 1):
        response = exchange(transmit, read_record_sfi(sfi, number, size))
        if response.sw in absent:
            break
        raise_for_status(response.sw, f"READ RECORD {sfi:02X} {number}")
        out.append(response.data)
    return out


def read_balance(transmit: Transmit, include_overdraft: bool = True) -> int:
    data = command(transmit, get_balance(include_overdraft), "GET BALANCE")
    return BALANCE_LAYOUT.parse(data).amount


def read_tunion(
    transmit: Transmit,
    *,
    via_ppse: bool = True,
    directory: tuple[DirectoryEntry, ...] | None = None,
    transactions: int = 10,
    process_records: int = 30,
    capp_record_ids: tuple[int, ...] = (),
) -> TUnionImage | None:
    """Read the application; None when the card has no T-Union e-purse.

    `directory` is the PPSE directory when the caller already read it (one SELECT PPSE per tap).
    """
    aid = find_tunion_aid(transmit, directory) if via_ppse else AID_TUNION_EP
    response = exchange(transmit, select_tunion(aid))
    if response.sw in APPLICATION_UNUSABLE:
        return None
    raise_for_status(response.sw, "SELECT T-Union")
    fci = parse_fci(response.data, "T-Union FCI")
    public = public_info(transmit, fci)
    management_raw = _optional_binary(transmit, SFI_MANAGEMENT, MANAGEMENT_INFO_LAYOUT.size)
    holder_raw = _optional_binary(transmit, SFI_HOLDER, HOLDER_INFO_LAYOUT.size)
    balance = read_balance(transmit)
    logs = _records(transmit, SFI_TRANSACTIONS, transactions, TRANSACTION_RECORD_LAYOUT.size)
    process = _records(transmit, SFI_PROCESS, process_records, PROCESS_RECORD_LAYOUT.size)
    capp: list[CappRecord] = []
    for record_id in capp_record_ids:
        reply = exchange(transmit, read_record_sfi(SFI_CAPP, record_id, CAPP_RECORD_LAYOUT.size))
        if reply.sw in FILE_ABSENT:
            continue
        raise_for_status(reply.sw, f"READ RECORD 1A {record_id}")
        capp.append(CAPP_RECORD_LAYOUT.parse(reply.data))
    if management_raw is not None and len(management_raw) != MANAGEMENT_INFO_LAYOUT.size:
        raise BadLength("T-Union 0x17", "end", len(management_raw), "READ BINARY answered a short file")
    return TUnionImage(
        aid=aid,
        public=public,
        balance=balance,
        management=None if management_raw is None else MANAGEMENT_INFO_LAYOUT.parse(management_raw),
        holder=None if holder_raw is None else HOLDER_INFO_LAYOUT.parse(holder_raw),
        transactions=tuple(TRANSACTION_RECORD_LAYOUT.parse(r) for r in logs),
        process_records=tuple(PROCESS_RECORD_LAYOUT.parse(r) for r in process),
        capp_records=tuple(capp),
    )
