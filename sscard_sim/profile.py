"""Card and PSAM profiles: TOML data files that say what a virtual card or PSAM holds.

A profile is personalisation data, the way an issuer's bureau feeds a blank chip: the SSSE
records, the T-Union files and purse, the e-cash application, which key file the keys come
from. The card's answers are built from these values with the wire structures of
`protocols`, so the profile never holds raw answers. Every personal datum in the bundled
profiles is fictitious (names 测试…, ID numbers with sequence 999).

A profile may name a `base` profile in its [card] table and override only what differs (the
cloned card is the Sichuan card with other keys). Bundled profiles live in
`sscard_sim/profiles/`; `resolve_profile("sichuan")` finds one by name, any other argument
is a path. Key files are found the same way, relative to the profile that names them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.errors import ProtocolError
from protocols.tunion import (
    HOLDER_INFO_LAYOUT,
    MANAGEMENT_INFO_LAYOUT,
    PUBLIC_INFO_LAYOUT,
    HolderInfo,
    ManagementInfo,
    PublicInfo,
    TransactionRecord,
)
from sscard_sim.keys import (
    CardPurchaseKey,
    CardSsseKeys,
    MasterKeys,
    card_purchase_key,
    card_ssse_keys,
    load_master_keys,
)

PROFILE_DIR = Path(__file__).with_name("profiles")
KEY_FILE_SUFFIX = "-keys"
DEFAULT_ATR_HISTORICAL = bytes.fromhex("5353433380000000")
"""Historical bytes of the virtual card's ATR ("SSC3" and a status indicator; our choice)."""


class ProfileError(ValueError):
    """A profile that cannot be found or does not describe a valid card or PSAM."""


def resolve_profile(name_or_path: str | Path) -> Path:
    """A bundled profile by name (`sichuan`), else the file at the given path."""
    text = str(name_or_path)
    bundled = PROFILE_DIR / f"{text}.toml"
    if "/" not in text and not text.endswith(".toml") and bundled.exists():
        return bundled
    path = Path(text)
    if path.exists():
        return path
    raise ProfileError(f"no profile {text!r}: not a bundled name ({', '.join(bundled_profiles())}) nor a file")


def bundled_profiles() -> list[str]:
    """Names of the bundled card and PSAM profiles (key files excluded)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml") if not p.stem.endswith(KEY_FILE_SUFFIX))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ProfileError(f"profile {path} inherits from itself")
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ProfileError(f"cannot read profile {path}: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"profile {path} is not valid TOML: {error}") from error
    base = data.get("card", {}).get("base")
    if base is None:
        return data
    base_path = _relative(path, str(base))
    merged = _merge(_load_toml(base_path, (*seen, path)), data)
    merged["card"].pop("base", None)
    return merged


def _relative(profile: Path, name: str) -> Path:
    """A file named in a profile: beside it, else bundled, else as given."""
    candidates = (
        profile.parent / name,
        profile.parent / f"{name}.toml",
        PROFILE_DIR / name,
        PROFILE_DIR / f"{name}.toml",
    )
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ProfileError(f"{profile.name}: cannot find {name!r}")


class _Table:
    """Typed access to one TOML table with errors that name the profile and the key."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ProfileError(f"{self.where}: '{key}' is missing")
            return default
        value = self.data[key]
        if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
            raise ProfileError(f"{self.where}: '{key}' = {value!r} has the wrong type")
        return value

    def hex(self, key: str, size: int | None = None, default: Any = ...) -> Any:
        text = self.get(key, str, default)
        if text is default and default is not ...:
            return default
        try:
            raw = bytes.fromhex(text)
        except ValueError as error:
            raise ProfileError(f"{self.where}: '{key}' is not hex: {error}") from error
        if size is not None and len(raw) != size:
            raise ProfileError(f"{self.where}: '{key}' is {len(raw)} bytes, expected {size}")
        return raw

    def date(self, key: str) -> dt.date:
        value = self.get(key, dt.date)
        if isinstance(value, dt.datetime):
            raise ProfileError(f"{self.where}: '{key}' must be a date without time")
        return value  # type: ignore[no-any-return]

    def table(self, key: str) -> _Table:
        return _Table(self.get(key, dict, {}), f"{self.where} [{key}]")


@dataclass(frozen=True)
class SsseProfile:
    """The social security application: EF05 (card) and EF06 (holder) data items."""

    card_id: bytes
    card_type: str
    spec_version: str
    init_org: bytes
    issue_date: dt.date
    expiry_date: dt.date
    card_number: str
    algorithm_id: int
    ssn: str
    name: str
    name_extension: str | None
    sex: str
    ethnicity: str
    birthplace: str
    birth_date: dt.date
    answers_select_with_61: bool

    @property
    def needs_external_auth(self) -> bool:
        """The 3.00 access rule: EF06 only after RKSSSE external authentication."""
        return self.spec_version >= "3"

    @property
    def region_code(self) -> str:
        return self.card_id[:3].hex().upper()


@dataclass(frozen=True)
class TUnionProfile:
    """The T-Union e-purse: its files, purse and keys."""

    public: PublicInfo
    holder: HolderInfo
    management: ManagementInfo
    balance: int
    overdraft_limit: int
    offline_atc: int
    locked: bool
    app_version: bytes
    capp_record_ids: tuple[int, ...]
    transactions: tuple[TransactionRecord, ...]
    purchase_keys: dict[int, CardPurchaseKey]


@dataclass(frozen=True)
class EcashProfile:
    """The UnionPay e-cash application (PBOC 3.0): what GET DATA and READ RECORD show."""

    aid: bytes
    label: str
    pan: str
    pan_sequence: int
    expiry_date: dt.date
    effective_date: dt.date
    balance: int
    balance_limit: int
    single_limit: int
    reset_threshold: int
    atc: int
    last_online_atc: int


@dataclass(frozen=True)
class CardProfile:
    """Everything a virtual card is personalised with."""

    name: str
    description: str
    atr: bytes
    uid: bytes
    ssse: SsseProfile
    ssse_keys: CardSsseKeys
    tunion: TUnionProfile | None
    ecash: EcashProfile | None
    verifies_terminal: bool
    external_auth_tries: int
    source: Path | None = field(default=None, compare=False)


def contactless_atr(historical: bytes) -> bytes:
    """The ATR a PC/SC reader makes up for an ISO 14443-4 card (PC/SC part 3): 3B 8n 80 01 … TCK."""
    if len(historical) > 15:
        raise ProfileError(f"{len(historical)} historical bytes, at most 15")
    body = bytes((0x80 | len(historical), 0x80, 0x01)) + historical
    tck = 0
    for byte in body:
        tck ^= byte
    return b"\x3b" + body + bytes((tck,))


def _ssse(table: _Table) -> SsseProfile:
    holder = table.table("holder")
    name_extension = holder.get("name_extension", str, None)
    return SsseProfile(
        card_id=table.hex("card_id", 16),
        card_type=table.get("card_type", str),
        spec_version=table.get("spec_version", str),
        init_org=table.hex("init_org", 12),
        issue_date=table.date("issue_date"),
        expiry_date=table.date("expiry_date"),
        card_number=table.get("card_number", str),
        algorithm_id=table.get("algorithm_id", int, 0x03),
        ssn=holder.get("ssn", str),
        name=holder.get("name", str),
        name_extension=name_extension,
        sex=holder.get("sex", str),
        ethnicity=holder.get("ethnicity", str),
        birthplace=holder.get("birthplace", str),
        birth_date=holder.date("birth_date"),
        answers_select_with_61=table.get("answers_select_with_61", bool, True),
    )


def _tunion(table: _Table, masters: MasterKeys) -> TUnionProfile:
    holder = table.table("holder")
    management = table.table("management")
    public = PublicInfo(
        issuer_id=table.hex("issuer_id", 8),
        application_type=table.get("application_type", int, 0x02),
        application_version=table.get("application_version", int, 0x01),
        application_serial=table.get("application_serial", str),
        start_date=table.date("start_date"),
        expiry_date=table.date("expiry_date"),
        issuer_fci=table.hex("issuer_fci", 2, b"\x00\x00"),
    )
    holder_info = HolderInfo(
        card_type=holder.get("card_type", int, 0x00),
        staff_flag=holder.get("staff_flag", int, 0x00),
        holder_name=holder.get("name", str, ""),
        holder_id=holder.get("id_number", str, ""),
        holder_id_type=holder.get("id_type", int, 0x00),
    )
    management_info = ManagementInfo(
        international_code=management.hex("international_code", 4, bytes.fromhex("00000156")),
        province_code=management.hex("province_code", 2),
        city_code=management.hex("city_code", 2),
        interop_type=management.get("interop_type", int, 0x0001),
        card_kind=management.get("card_kind", int, 0x00),
        reserved=bytes(49),
    )
    try:  # validate the three files now, not at the first READ BINARY
        PUBLIC_INFO_LAYOUT.build(public)
        HOLDER_INFO_LAYOUT.build(holder_info)
        MANAGEMENT_INFO_LAYOUT.build(management_info)
    except ProtocolError as error:
        raise ProfileError(f"{table.where}: {error}") from error
    serial8 = public.serial_bytes
    purchase_keys: dict[int, CardPurchaseKey] = {}
    for index_text, version in table.get("key_versions", dict, {"1": 1}).items():
        master = masters.purchase_key(int(version))
        if master is None:
            raise ProfileError(f"{table.where}: key file {masters.name} has no purchase key version {version}")
        purchase_keys[int(index_text)] = card_purchase_key(master, serial8)
    transactions = []
    for number, entry in enumerate(table.get("transactions", list, [])):
        log = _Table(entry, f"{table.where} transactions[{number}]")
        transactions.append(
            TransactionRecord(
                atc=log.get("atc", int),
                overdraft_limit=log.get("overdraft_limit", int, 0),
                amount=log.get("amount", int),
                transaction_type=log.get("type", int),
                terminal_id=log.hex("terminal_id", 6),
                time=log.get("time", dt.datetime),
            )
        )
    return TUnionProfile(
        public=public,
        holder=holder_info,
        management=management_info,
        balance=table.get("balance", int),
        overdraft_limit=table.get("overdraft_limit", int, 0),
        offline_atc=table.get("offline_atc", int, 0),
        locked=table.get("locked", bool, False),
        app_version=table.hex("app_version", None, b"\x01"),
        capp_record_ids=tuple(table.get("capp_record_ids", list, [1, 2])),
        transactions=tuple(transactions),
        purchase_keys=purchase_keys,
    )


def _ecash(table: _Table) -> EcashProfile:
    return EcashProfile(
        aid=table.hex("aid", None, bytes.fromhex("A000000333010106")),
        label=table.get("label", str, "UnionPay EC"),
        pan=table.get("pan", str),
        pan_sequence=table.get("pan_sequence", int, 1),
        expiry_date=table.date("expiry_date"),
        effective_date=table.date("effective_date"),
        balance=table.get("balance", int),
        balance_limit=table.get("balance_limit", int, 100000),
        single_limit=table.get("single_limit", int, 100000),
        reset_threshold=table.get("reset_threshold", int, 0),
        atc=table.get("atc", int, 0),
        last_online_atc=table.get("last_online_atc", int, 0),
    )


def load_card_profile(name_or_path: str | Path) -> CardProfile:
    """Read a card profile (bundled name or path) and personalise its keys from its key file."""
    path = resolve_profile(name_or_path)
    data = _load_toml(path)
    card = _Table(data.get("card", {}), f"{path.name} [card]")
    masters = load_master_keys(_relative(path, card.get("keys", str)))
    ssse = _ssse(_Table(data.get("ssse", {}), f"{path.name} [ssse]"))
    tunion = _tunion(_Table(data["tunion"], f"{path.name} [tunion]"), masters) if "tunion" in data else None
    ecash = _ecash(_Table(data["ecash"], f"{path.name} [ecash]")) if "ecash" in data else None
    historical = card.hex("atr_historical", None, DEFAULT_ATR_HISTORICAL)
    default_uid = b"\x08" + hashlib.sha256(ssse.card_id).digest()[:3]  # random-ID form, stable per card
    return CardProfile(
        name=path.stem,
        description=card.get("description", str, ""),
        atr=contactless_atr(historical),
        uid=card.hex("uid", None, default_uid),
        ssse=ssse,
        ssse_keys=card_ssse_keys(masters, ssse.card_id),
        tunion=tunion,
        ecash=ecash,
        verifies_terminal=card.get("verifies_terminal", bool, True),
        external_auth_tries=card.get("external_auth_tries", int, 5),
        source=path,
    )


@dataclass(frozen=True)
class PsamProfile:
    """A PSAM: its terminal number, serial, purchase application and the masters it holds."""

    name: str
    terminal_id: bytes
    serial: bytes
    purchase_df: bytes
    sequence: int
    masters: MasterKeys
    t0_get_response: bool
    atr: bytes
    ssse_algorithms: tuple[int, ...]


def load_psam_profile(name_or_path: str | Path = "demo-psam") -> PsamProfile:
    """Read a PSAM profile (bundled name or path) with the master keys of its key file."""
    path = resolve_profile(name_or_path)
    data = _load_toml(path)
    psam = _Table(data.get("psam", {}), f"{path.name} [psam]")
    return PsamProfile(
        name=path.stem,
        terminal_id=psam.hex("terminal_id", 6),
        serial=psam.hex("serial", 10),
        purchase_df=psam.hex("purchase_df", 2, bytes.fromhex("8011")),
        sequence=psam.get("sequence", int, 1),
        masters=load_master_keys(_relative(path, psam.get("keys", str))),
        t0_get_response=psam.get("t0_get_response", bool, True),
        atr=psam.hex("atr", None, bytes.fromhex("3B6900005053414D2D44454D4F")),
        ssse_algorithms=tuple(psam.get("ssse_algorithms", list, [0x03])),
    )
