"""Reading the SSSE: one conversation over the card's transmit (and the PSAM's for 3.00 cards).

Order follows the reference flow: SELECT SSSE (algorithm id from the FCI), SELECT EF05,
items 01, 03 and 07 (readable before authentication), then for a third-generation card the
PSAM-backed authentication, then the remaining EF05 items and EF06. A third-generation card
met without a PSAM yields an image with what was readable and `ef06_read` False, as reader
SDKs do ("不插 PSAM，可读部分信息"). A PSAM that cannot authenticate (it does not know the
commands, `PsamCannotAuthenticate`) is met the same way, and the image says why in
`authentication_problem`; a card that fails authentication (`CardNotGenuine`) raises.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

from protocols.exchange import Transmit, command
from protocols.fci import parse_fci
from protocols.marks import PERSONAL, is_personal
from protocols.ssse import (
    EF05,
    EF06,
    ITEMS,
    Generation,
    algorithm_id,
    generation_from_version,
    region_code,
    select_ef,
    select_ssse,
)
from protocols.ssse_auth import PsamCannotAuthenticate, PsamSsseConfig, authenticate
from protocols.ssse_items import read_value
from protocols.status import FileNotFound, RecordNotFound, SecurityStatusNotSatisfied


@dataclass(frozen=True)
class SsseImage:
    """What the SSSE gave; None where an item is absent or was not readable."""

    algorithm_id: int
    card_identification_code: bytes | None = None
    card_type: str | None = None
    spec_version: str | None = None
    initialising_institution: bytes | None = None
    issue_date: dt.date | None = None
    expiry_date: dt.date | None = None
    card_number: str | None = field(default=None, metadata=PERSONAL)
    social_security_number: str | None = field(default=None, metadata=PERSONAL)
    name: str | None = field(default=None, metadata=PERSONAL)
    name_extension: str | None = field(default=None, metadata=PERSONAL)
    sex: str | None = None
    ethnicity: str | None = None
    birthplace: str | None = field(default=None, metadata=PERSONAL)
    birth_date: dt.date | None = field(default=None, metadata=PERSONAL)
    authenticated: bool = False
    ef06_read: bool = False
    authentication_problem: str | None = None
    """Why a third-generation card was not authenticated (no PSAM, the PSAM's refusal), else None."""

    @property
    def region_code(self) -> str | None:
        code = self.card_identification_code
        return None if code is None or len(code) < 3 else region_code(code)

    @property
    def generation(self) -> Generation | None:
        return None if self.spec_version is None else generation_from_version(self.spec_version)

    @property
    def full_name(self) -> str | None:
        """Name and name extension joined, as 2.0 and 3.0 cards split long names."""
        if self.name is None:
            return None
        return self.name + (self.name_extension or "")


def read_ssse(
    card: Transmit,
    psam: Transmit | None = None,
    psam_config: PsamSsseConfig | None = None,
) -> SsseImage:
    """Read EF05 and, when allowed, EF06. Raises `FileNotFound` if the card has no SSSE."""
    fci_data = command(card, select_ssse(), "SELECT SSSE")
    algorithm = algorithm_id(parse_fci(fci_data, "SSSE FCI")) if fci_data else 0x01
    values: dict[str, object] = {"algorithm_id": algorithm}
    command(card, select_ef(EF05), "SELECT EF05")
    for tag in (0x01, 0x03, 0x07):
        values[ITEMS[tag].name] = read_value(card, tag, EF05)
    version = values["spec_version"]
    generation = generation_from_version(version) if isinstance(version, str) else Generation.SECOND
    card_id = values["card_identification_code"]
    if generation.needs_psam:
        if psam is None:
            values["authentication_problem"] = "no PSAM"
            return SsseImage(**values)  # type: ignore[arg-type]
        if not isinstance(card_id, bytes) or len(card_id) != 16:
            values["authentication_problem"] = "no 16-byte card identification code to authenticate with"
            return SsseImage(**values)  # type: ignore[arg-type]
        try:
            authenticate(card, psam, card_id, algorithm, psam_config)
        except PsamCannotAuthenticate as refused:
            values["authentication_problem"] = str(refused)
            for tag in (0x02, 0x04, 0x05, 0x06):
                values[ITEMS[tag].name] = _unless_guarded(card, tag)
            return SsseImage(**values)  # type: ignore[arg-type]
        values["authenticated"] = True
    for tag in (0x02, 0x04, 0x05, 0x06):
        values[ITEMS[tag].name] = read_value(card, tag, EF05)
    try:
        command(card, select_ef(EF06), "SELECT EF06")
    except (FileNotFound, RecordNotFound):
        return SsseImage(**values)  # type: ignore[arg-type]
    for tag in (0x08, 0x09, 0x4E, 0x0A, 0x0B, 0x0C, 0x0D):
        values[ITEMS[tag].name] = read_value(card, tag, EF06)
    values["ef06_read"] = True
    return SsseImage(**values)  # type: ignore[arg-type]


def _unless_guarded(card: Transmit, tag: int) -> object:
    """An EF05 item the card may guard until authentication (6982): None when it does."""
    try:
        return read_value(card, tag, EF05)
    except SecurityStatusNotSatisfied:
        return None


SSSE_PERSONAL_FIELDS = frozenset(f.name for f in dataclasses.fields(SsseImage) if is_personal(f))
