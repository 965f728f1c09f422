"""Read only the SSSE items a terminal needs: each APDU costs a few milliseconds on air.

A bus validator wants the region and the card number (and, for concessions, the birth
date); a library gate wants validity; a pharmacy wants the holder. `read_items` selects the
SSSE and EF05, reads the requested EF05 items, authenticates a third-generation card with
the PSAM when EF06 items are wanted or `authenticate` is asked for (a gate proves the card
genuine), and reads the requested EF06 items. The spec version is read whenever the
generation decides what follows.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from protocols.exchange import Transmit, command, exchange
from protocols.fci import parse_fci
from protocols.ssse import (
    EF05,
    EF06,
    ITEMS,
    ItemValue,
    algorithm_id,
    generation_from_version,
    parse_item_record,
    read_item,
    select_ef,
    select_ssse,
)
from protocols.ssse_auth import PsamCannotAuthenticate, PsamSsseConfig
from protocols.ssse_auth import authenticate as authenticate_with_psam
from protocols.status import RECORD_ABSENT, SecurityStatusNotSatisfied, raise_for_status

CARD_IDENTIFICATION_CODE = 0x01
SPEC_VERSION = 0x03


@dataclass(frozen=True)
class SsseItems:
    """The items read, by name (None where absent), and whether the PSAM authenticated the card."""

    values: dict[str, ItemValue]
    authenticated: bool

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None


def read_value(card: Transmit, tag: int, ef: bytes) -> ItemValue:
    """One item of the selected EF by identifier; None when the card has no such record."""
    response = exchange(card, read_item(tag))
    if response.sw in RECORD_ABSENT:
        return None
    raise_for_status(response.sw, f"READ RECORD {ITEMS[tag].name}")
    return parse_item_record(response.data, ef, expected_tag=tag).value


@dataclass
class SsseSession:
    """The SSSE selected with EF05 current: what `open_ssse` read, and what a second phase needs.

    A validator reads EF05 first (the card number names the card), then decides whether it
    needs EF06 at all: a repeat rider's age band may already be known. `read_protected`
    carries on from here, on the same selection, without selecting anything again.
    """

    card: Transmit
    algorithm: int
    values: dict[str, ItemValue]


def open_ssse(card: Transmit, ef05: Collection[int]) -> SsseSession:
    """SELECT the SSSE (asking for its FCI with Le) and EF05, and read the requested EF05 items."""
    fci_data = command(card, select_ssse(with_le=True), "SELECT SSSE")
    algorithm = algorithm_id(parse_fci(fci_data, "SSSE FCI")) if fci_data else 0x01
    command(card, select_ef(EF05), "SELECT EF05")
    values: dict[str, ItemValue] = {ITEMS[tag].name: read_value(card, tag, EF05) for tag in sorted(set(ef05))}
    return SsseSession(card, algorithm, values)


def read_protected(
    session: SsseSession,
    psam: Transmit | None,
    ef06: Collection[int] = (),
    *,
    authenticate: bool = False,
    psam_config: PsamSsseConfig | None = None,
) -> SsseItems:
    """Authenticate a third-generation card with the PSAM if EF06 items or `authenticate` are
    asked for, then read the EF06 items; the EF05 items the decision needs are read if missing.
    """
    card, values = session.card, session.values
    authenticated = False
    if ef06 or authenticate:
        for tag in (CARD_IDENTIFICATION_CODE, SPEC_VERSION):
            if ITEMS[tag].name not in values:
                values[ITEMS[tag].name] = read_value(card, tag, EF05)
        version = values.get("spec_version")
        card_id = values.get("card_identification_code")
        if generation_from_version(version if isinstance(version, str) else "").needs_psam:
            if psam is None or not isinstance(card_id, bytes):
                raise SecurityStatusNotSatisfied(0x6982, "SSSE authentication needs the PSAM")
            try:
                authenticate_with_psam(card, psam, card_id, session.algorithm, psam_config)
            except PsamCannotAuthenticate as refused:
                raise refused.with_readable(values) from refused
            authenticated = True
    if ef06:
        command(card, select_ef(EF06), "SELECT EF06")
        values.update({ITEMS[tag].name: read_value(card, tag, EF06) for tag in ef06})
    return SsseItems(values, authenticated)


def read_items(
    card: Transmit,
    psam: Transmit | None,
    ef05: Collection[int],
    ef06: Collection[int] = (),
    *,
    authenticate: bool = False,
    psam_config: PsamSsseConfig | None = None,
) -> SsseItems:
    """The requested items of EF05 and EF06, in one conversation (`open_ssse`, `read_protected`).

    Raises `SecurityStatusNotSatisfied` when a third-generation card must be authenticated
    and no PSAM was given, `CardNotGenuine` when the card is not genuine, and
    `PsamCannotAuthenticate` when the PSAM cannot authenticate it; the latter carries the EF05
    items read so far in `readable`, so the terminal can still say which card it refused.
    """
    wanted = set(ef05)
    if ef06 or authenticate:
        wanted |= {CARD_IDENTIFICATION_CODE, SPEC_VERSION}
    session = open_ssse(card, wanted)
    return read_protected(session, psam, ef06, authenticate=authenticate, psam_config=psam_config)
