"""Reader settings: which PC/SC readers, NFC device and serial peripherals this terminal uses.

Only the fields live here; the daemon's configuration loader composes `ReaderSettings` into
the terminal configuration. `load_reader_settings` reads a TOML file on its own for the CLI
(`sscard readers --config FILE`, `sscard read --config FILE`): the `[readers]` table when
there is one, the whole document otherwise.

The settings are plain data: `reader.backends.pcsc` builds the readers from them, so loading
a configuration (`sscard check-config`) loads no hardware library. The default patterns match
real readers only: dual-interface readers list their contactless slot as "... PICC ..." or
"... Contactless ..." and their SAM slots as "... SAM ...". The virtual readers of vpcd
("Virtual PCD 00 00", "Virtual PCD 00 01") are never matched unless a configuration names
them, as the demo's does: a terminal with vpcd installed must not pair with a virtual PSAM.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reader.peripherals.settings import DisplaySettings, RelaySettings


def _valid_pattern(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from error
    return value


class PcscSettings(BaseModel):
    """PC/SC slots chosen by reader-name patterns (regular expressions, case-insensitive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    contactless: str = Field(
        default=r"contactless|picc|acr122",
        description="name pattern of the reader slot where cards are tapped",
    )
    sam: str | None = Field(
        default=r"\bsam\b",
        description="name pattern of the PSAM slot; None when the terminal has no PSAM",
    )
    transmit_timeout: float = Field(default=2.0, gt=0, description="deadline of one APDU, seconds")
    connect_timeout: float = Field(default=2.0, gt=0, description="deadline of SCardConnect, seconds")

    _check_contactless = field_validator("contactless")(_valid_pattern)

    @field_validator("sam")
    @classmethod
    def _check_sam(cls, value: str | None) -> str | None:
        """An empty pattern would match every reader: it means "no PSAM slot"."""
        return _valid_pattern(value or None)

    def role_of(self, reader_name: str) -> str | None:
        """'sam', 'contactless' or None for a PC/SC reader name, as the readers above would pick."""
        if self.sam is not None and re.search(self.sam, reader_name, re.IGNORECASE):
            return "sam"
        if re.search(self.contactless, reader_name, re.IGNORECASE):
            return "contactless"
        return None


class NfcSettings(BaseModel):
    """An nfcpy device: 'usb', 'usb:VID:PID', 'tty:USB0:pn532', 'udp:host:port' (tests)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(default=None, description="nfcpy device path; None when there is no NFC reader")


class SerialSettings(BaseModel):
    """Serial peripherals (a stable /dev/serial/by-id/... device path is best).

    Each is a table (`[readers.serial.relay]` with `device = ...`), or just the device path
    as a string when the defaults fit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    relay: RelaySettings | None = Field(default=None, description="gate relay (LCUS protocol)")
    display: DisplaySettings | None = Field(default=None, description="line display with buzzer")

    @field_validator("relay", "display", mode="before")
    @classmethod
    def _device_path_alone(cls, value: object) -> object:
        return {"device": value} if isinstance(value, str) else value


class ReaderSettings(BaseModel):
    """Everything about readers and peripherals, one section of the terminal configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pcsc: PcscSettings = PcscSettings()
    nfc: NfcSettings = NfcSettings()
    serial: SerialSettings = SerialSettings()


def load_reader_settings(path: Path | None) -> ReaderSettings:
    """Read settings from a TOML file (its `[readers]` table if present); defaults without a file."""
    if path is None:
        return ReaderSettings()
    with path.open("rb") as handle:
        document: dict[str, Any] = tomllib.load(handle)
    section = document.get("readers", document)
    return ReaderSettings.model_validate(section)
