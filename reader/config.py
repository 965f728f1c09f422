"""The terminal's configuration: one TOML file, validated in full at start.

Each part of the daemon owns its settings model (queue and uplinks in `reader.uplink`,
readers in `reader.backends`); this module composes them under their TOML sections and adds
the terminal's own. A configuration error names the file, the key and what is allowed, and
the daemon exits with EX_CONFIG (78) instead of starting half-configured.

Secrets never sit in the file: keys are referenced as `file:/path` or `credential:NAME`,
the latter read from systemd's $CREDENTIALS_DIRECTORY (LoadCredential=).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reader.backends.settings import ReaderSettings
from reader.uplink.settings import HotlistSettings, HttpUplinkSettings, MqttUplinkSettings, QueueSettings

EX_CONFIG = 78


class ConfigError(Exception):
    """The configuration cannot be used; the message names file, key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SecretRef = Annotated[str, Field(pattern=r"^(file:/.+|credential:[A-Za-z0-9_.-]+)$")]


def read_secret(ref: str) -> bytes:
    """The bytes a `file:` or `credential:` reference points at (trailing newline removed)."""
    if ref.startswith("credential:"):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(f"{ref}: no $CREDENTIALS_DIRECTORY (is LoadCredential= set in the unit?)")
        path = Path(directory) / ref.removeprefix("credential:")
    else:
        path = Path(ref.removeprefix("file:"))
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{ref}: cannot read the secret: {error.strerror}") from error
    secret = data.rstrip(b"\r\n")
    if not secret:
        raise ConfigError(f"{ref}: the secret is empty")
    return secret


class TerminalSettings(_Section):
    """Who this terminal is and what it does."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    profile: Literal["bus", "library", "pharmacy"]
    state_dir: Path = Path(os.environ.get("STATE_DIRECTORY", "/var/lib/sscard"))
    token_key: SecretRef = Field(description="per-deployment HMAC key for card tokens")
    timezone: str = "Asia/Shanghai"


class AgeBandSettings(_Section):
    name: str
    min_age: int = Field(ge=0, le=150)
    percent: int = Field(ge=0, le=100, description="share of the fare the holder pays")


class BusSettings(_Section):
    """Fare rules of a bus validator; amounts in fen."""

    line: str
    fare: int = Field(gt=0, le=100_000)
    accepted_regions: list[Annotated[str, Field(pattern=r"^[0-9]{1,6}$")]] = Field(min_length=1)
    passback_seconds: float = Field(60, ge=0)
    transfer_discount: int = Field(0, ge=0)
    transfer_window_minutes: float = Field(0, ge=0)
    bands: list[AgeBandSettings] = []
    tearing_window_seconds: float = Field(30, gt=0, description="how long a torn debit waits for its card")
    psam_key_index: int = Field(1, ge=0, le=255)

    @field_validator("bands")
    @classmethod
    def _distinct_ages(cls, bands: list[AgeBandSettings]) -> list[AgeBandSettings]:
        ages = [band.min_age for band in bands]
        if len(set(ages)) != len(ages):
            raise ValueError("two bands start at the same age")
        return bands


class HolderSettings(_Section):
    """Library gates and pharmacy POS: which cards are served."""

    accepted_regions: list[Annotated[str, Field(pattern=r"^[0-9]{1,6}$")]] = Field(min_length=1)
    gate_open_seconds: float = Field(3.0, gt=0, le=60)


class ApiSettings(_Section):
    """The local API: loopback only, or a unix socket."""

    listen: str = Field("127.0.0.1:8787", pattern=r"^(unix:/.+|(127\.[0-9.]+|localhost|\[::1\]):[0-9]{1,5})$")
    token: SecretRef


class UplinkSection(_Section):
    """One queue feeds one uplink: with two, each would delete what the other has not sent."""

    http: HttpUplinkSettings = HttpUplinkSettings()
    mqtt: MqttUplinkSettings = MqttUplinkSettings()

    @model_validator(mode="after")
    def _one_uplink(self) -> UplinkSection:
        if self.http.enabled and self.mqtt.enabled:
            raise ValueError("enable either uplink.http or uplink.mqtt, not both")
        return self


class Config(_Section):
    """The whole file."""

    terminal: TerminalSettings
    bus: BusSettings | None = None
    library: HolderSettings | None = None
    pharmacy: HolderSettings | None = None
    api: ApiSettings | None = None
    readers: ReaderSettings = ReaderSettings()
    queue: QueueSettings = QueueSettings()
    uplink: UplinkSection = UplinkSection()
    hotlist: HotlistSettings = HotlistSettings()


def _key_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _with_state_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Files whose path is not given live in the terminal's state directory."""
    terminal = raw.get("terminal", {})
    state_dir = Path(terminal.get("state_dir", os.environ.get("STATE_DIRECTORY", "/var/lib/sscard")))
    raw.setdefault("queue", {}).setdefault("path", str(state_dir / "queue.sqlite3"))
    raw.setdefault("hotlist", {}).setdefault("path", str(state_dir / "hotlist.bin"))
    return raw


def _describe(issue: Any, source: str) -> str:
    """One line per problem: file, dotted key, what is allowed, and what was found."""
    line = f"{source}: {_key_path(issue['loc'])}: {issue['msg']}"
    if issue["type"] != "missing" and not isinstance(issue["input"], dict):
        line += f" (got {issue['input']!r})"
    return line


def parse_config(raw: dict[str, Any], source: str) -> Config:
    """Validate an already-read TOML document; `source` names it in errors."""
    if not isinstance(raw.get("terminal"), dict):
        raise ConfigError(f"{source}: [terminal]: missing section (id, profile, token_key are required)")
    try:
        config = Config.model_validate(_with_state_defaults(raw))
    except ValidationError as error:
        raise ConfigError("\n".join(_describe(issue, source) for issue in error.errors())) from None
    profile = config.terminal.profile
    if getattr(config, profile) is None:
        raise ConfigError(f"{source}: [{profile}]: missing section for terminal.profile = {profile!r}")
    return config


def load_config(path: Path) -> Config:
    """Read and validate the configuration file at `path`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text at byte {error.start}") from error
    return parse_config(raw, str(path))
