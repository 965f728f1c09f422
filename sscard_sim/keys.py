"""Master key sets for virtual cards and PSAMs, loaded from TOML key files.

A key file holds the issuer's master keys the way a key ceremony hands them to a card
personalisation line and to a PSAM: the card receives keys diversified for its serial, the
PSAM keeps the masters. Key files are test and demo data only (they sit beside the card
profiles in `sscard_sim/profiles/`); the production terminal never reads one, its keys stay
inside a real PSAM.

File format:

    [tunion.1]                 # purchase key version 1 (the version INITIALIZE answers)
    algorithm = 0x04           # algorithm identifier INITIALIZE answers for this key
    mpk = "32 hex digits"      # master purchase key
    mtk = "32 hex digits"      # master TAC key

    [ssse]
    mia = "32 hex digits"      # master internal-authentication key
    rkssse = "32 hex digits"   # master external-authentication key (EXTERNAL AUTHENTICATE P2 0A)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sscard_sim import crypto


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not in the expected format."""


@dataclass(frozen=True)
class PurchaseMasterKey:
    """One version of the T-Union purchase and TAC master keys."""

    version: int
    algorithm: int
    mpk: bytes
    mtk: bytes


@dataclass(frozen=True)
class MasterKeys:
    """An issuer's master keys: T-Union purchase keys by version, SSSE authentication keys."""

    name: str
    purchase: dict[int, PurchaseMasterKey]
    ssse_internal: bytes
    ssse_external: bytes

    def purchase_key(self, version: int) -> PurchaseMasterKey | None:
        return self.purchase.get(version)


@dataclass(frozen=True)
class CardPurchaseKey:
    """A card's own purchase key (DPK) and TAC key (DTK) for one key version."""

    version: int
    algorithm: int
    dpk: bytes
    dtk: bytes


@dataclass(frozen=True)
class CardSsseKeys:
    """A card's own SSSE authentication keys."""

    internal: bytes
    external: bytes


def card_purchase_key(master: PurchaseMasterKey, serial8: bytes) -> CardPurchaseKey:
    """Diversify one purchase key version for the card whose application serial ends in `serial8`."""
    return CardPurchaseKey(
        version=master.version,
        algorithm=master.algorithm,
        dpk=crypto.diversify(master.mpk, serial8),
        dtk=crypto.diversify(master.mtk, serial8),
    )


def card_ssse_keys(masters: MasterKeys, card_id: bytes) -> CardSsseKeys:
    """Diversify the SSSE keys for the card whose identification code (EF05 01) is `card_id`."""
    return CardSsseKeys(
        internal=crypto.diversify(masters.ssse_internal, card_id),
        external=crypto.diversify(masters.ssse_external, card_id),
    )


def _key(table: dict[str, Any], name: str, where: str) -> bytes:
    value = table.get(name)
    if not isinstance(value, str):
        raise KeyFileError(f"{where}: '{name}' is missing or not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as error:
        raise KeyFileError(f"{where}: '{name}' is not hex: {error}") from error
    if len(raw) != crypto.KEY_SIZE:
        raise KeyFileError(f"{where}: '{name}' is {len(raw)} bytes, an SM4 key is {crypto.KEY_SIZE}")
    return raw


def parse_master_keys(data: dict[str, Any], name: str) -> MasterKeys:
    """Master keys from the parsed TOML of a key file."""
    tunion = data.get("tunion")
    if not isinstance(tunion, dict) or not tunion:
        raise KeyFileError(f"{name}: no [tunion.<version>] table")
    purchase: dict[int, PurchaseMasterKey] = {}
    for version_text, table in tunion.items():
        where = f"{name} [tunion.{version_text}]"
        if not version_text.isdigit() or not 0 <= int(version_text) <= 0xFF or not isinstance(table, dict):
            raise KeyFileError(f"{where}: the key version must be a number 0..255 naming a table")
        algorithm = table.get("algorithm")
        if not isinstance(algorithm, int) or not 0 <= algorithm <= 0xFF:
            raise KeyFileError(f"{where}: 'algorithm' must be a byte")
        version = int(version_text)
        purchase[version] = PurchaseMasterKey(
            version, algorithm, _key(table, "mpk", where), _key(table, "mtk", where)
        )
    ssse = data.get("ssse")
    if not isinstance(ssse, dict):
        raise KeyFileError(f"{name}: no [ssse] table")
    where = f"{name} [ssse]"
    return MasterKeys(name, purchase, _key(ssse, "mia", where), _key(ssse, "rkssse", where))


def load_master_keys(path: Path) -> MasterKeys:
    """Read a key file (see the module docstring for its format)."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise KeyFileError(f"key file {path} is not valid TOML: {error}") from error
    return parse_master_keys(data, path.name)
