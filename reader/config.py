"""The terminal's configuration: one TOML file, validated in full at start.

Each part of the daemon owns its settings model (queue and uplinks in `reader.uplink`,
readers in `reader.backends`); this module composes them under their TOML sections and adds
the terminal's own. A configuration error names the file, the key and what is allowed, one
line per problem, and the daemon exits with EX_CONFIG (78) instead of starting
half-configured.

Validation is strict about types: TOML is typed, so `fare = "200"` or `enabled = "yes"` is
a mistake to point out, not a value to guess at.

Secrets never sit in the file: keys are referenced as `file:/path` or `credential:NAME`,
the latter read from systemd's $CREDENTIALS_DIRECTORY (LoadCredential=); the uplinks take
plain absolute paths to their key files. `check_secrets` reads every secret the
configuration will use, so a missing credential is reported before anything is opened.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import ssl
import stat
import tomllib
import types
import typing
import urllib.parse
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from reader.backends.settings import ReaderSettings
from reader.daemon.fare_settings import FareRules, FareTableSettings, WhitelistSettings, bus_fare_rules
from reader.daemon.fares import AgeBand
from reader.uplink.settings import (
    HotlistSettings,
    HttpUplinkSettings,
    MqttUplinkSettings,
    ParameterSettings,
    QueueSettings,
    TlsSettings,
)

EX_CONFIG = 78


class ConfigError(Exception):
    """The configuration cannot be used; the message names file, key and what is allowed."""


class _Section(BaseModel):
    """Strict about unknown keys, and no inf or nan: a timer of inf seconds never fires."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


DAY_SECONDS = 86_400
INT64_MAX = 2**63 - 1
"""SQLite's INTEGER, and so the largest count or size the queue can store or compare."""

# Bounds for keys of the settings models composed from reader.uplink and reader.backends:
# values their types allow, that would only fail once the daemon runs (a timer that
# overflows, a timeout no peer waits for, an MQTT field wider than the protocol's).
# Looked up by field name, wherever the field sits; checked after validation and shown in
# the "what is allowed" text of the key.
_FIELD_LIMITS: dict[str, float] = {
    "busy_timeout_s": 600,
    "transmit_timeout": 600,
    "connect_timeout": 600,
    "connect_timeout_s": 600,
    "read_timeout_s": 600,
    "write_timeout_s": 600,
    "ack_timeout_s": 600,
    "idle_poll_s": 3600,
    "poll_interval_s": DAY_SECONDS,
    "retry_after_max_s": DAY_SECONDS,
    "initial_s": DAY_SECONDS,
    "max_s": DAY_SECONDS,
    "multiplier": 100,
    "keepalive_s": 65_535,
    "session_expiry_s": 2**32 - 1,
}


SECRET_PATTERN = r"^(file:/.+|credential:[A-Za-z0-9_.-]+)$"
TERMINAL_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
REGION_PATTERN = r"^[0-9]{1,6}$"
LINE_PATTERN = r"^[0-9]{1,4}$"
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
LISTEN_PATTERN = r"^(unix:/.+|(127\.[0-9.]+|localhost|\[::1\]):[0-9]{1,5})$"

# What a value matching each pattern looks like, in the words an error message needs.
_PATTERN_HINTS = {
    SECRET_PATTERN: (
        "a reference to the secret, 'file:/absolute/path' or 'credential:NAME' (read from"
        " $CREDENTIALS_DIRECTORY), never the secret itself"
    ),
    TERMINAL_ID_PATTERN: "1 to 64 letters, digits, '.', '_' or '-'",
    LINE_PATTERN: 'a line number of 1 to 4 digits in quotes, such as "812"',
    REGION_PATTERN: 'a region code prefix of 1 to 6 digits in quotes, such as "51" or "510100"',
    CLOCK_PATTERN: 'a local time of day as "HH:MM" in quotes, such as "11:00"',
    LISTEN_PATTERN: "'unix:/path/to/socket' or a loopback address with a port, such as '127.0.0.1:8787'",
}

# Keys whose type alone does not say what they take.
_READER_PATTERN = "a regular expression (Python syntax), matched case-insensitively against PC/SC reader names"
_KEY_HINTS = {
    ("readers", "pcsc", "contactless"): _READER_PATTERN,
    ("readers", "pcsc", "sam"): _READER_PATTERN + ', or "" for a terminal without PSAM',
}

SecretRef = Annotated[str, Field(pattern=SECRET_PATTERN)]
Region = Annotated[str, Field(pattern=REGION_PATTERN)]

_CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
_SYSTEMD_CREDENTIALS = Path("/run/credentials")


def read_secret(ref: str) -> bytes:
    """The bytes a `file:` or `credential:` reference points at (trailing newline removed)."""
    if ref.startswith("credential:"):
        name = ref.removeprefix("credential:")
        directory = os.environ.get(_CREDENTIALS_ENV)
        if not directory:
            raise ConfigError(
                f"{ref}: ${_CREDENTIALS_ENV} is not set, so credential {name} cannot be read"
                f" (the unit must load it: LoadCredential={name})"
            )
        path = Path(directory) / name
    else:
        path = Path(ref.removeprefix("file:"))
    return _read_secret_file(path, ref)


def _read_secret_file(path: Path, ref: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{ref}: cannot read the secret: {error.strerror}{_credential_advice(path)}") from error
    secret = data.rstrip(b"\r\n")
    if not secret:
        raise ConfigError(f"{ref}: the secret is empty")
    return secret


def _credential_name(path: Path) -> str | None:
    """The systemd credential a path stands for, if it lies in a credentials directory."""
    directory = os.environ.get(_CREDENTIALS_ENV)
    if directory and path.parent == Path(directory):
        return path.name
    if path.parent.parent == _SYSTEMD_CREDENTIALS:
        return path.name
    return None


def _credential_advice(path: Path) -> str:
    name = _credential_name(path)
    if name is None:
        return ""
    return (
        f" (credential {name} is missing: LoadCredential={name} in the unit, with the secret in /etc/credstore/{name})"
    )


class TerminalSettings(_Section):
    """Who this terminal is and what it does."""

    id: str = Field(pattern=TERMINAL_ID_PATTERN)
    profile: Literal["bus", "library", "pharmacy", "canteen", "venue"]
    state_dir: Path = Field(
        Path(os.environ.get("STATE_DIRECTORY", "/var/lib/sscard")),
        description="an absolute path to a directory, or to one that can be created",
    )
    token_key: SecretRef = Field(description="per-deployment HMAC key for card tokens")
    timezone: str = Field("Asia/Shanghai", description="an IANA time zone name, such as 'Asia/Shanghai'")

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        """Relative to what? Under systemd the working directory is /, in a shell wherever one is."""
        if not value.is_absolute():
            raise ValueError("must be an absolute path to a directory, such as /var/lib/sscard")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        """The pipeline computes ages and transfer windows in this zone at every tap."""
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "must be a time zone of the IANA database on this machine, such as 'Asia/Shanghai'"
            ) from None
        return value


class AgeBandSettings(_Section):
    name: str
    min_age: int = Field(ge=0, le=150)
    percent: int = Field(ge=0, le=100, description="share of the fare the holder pays")


LINE_CODE_BYTES = 2
"""The line's share of the 0x1E record's line/station field (cards.md §2.3)."""


class BusSettings(_Section):
    """Fare rules of a bus validator; amounts in fen."""

    line: str = Field(pattern=LINE_PATTERN, description="line number, BCD-coded in the card's 0x1E log")
    fare: int = Field(gt=0, le=100_000)
    accepted_regions: list[Region] = Field(min_length=1)
    passback_seconds: float = Field(60, ge=0, le=DAY_SECONDS)
    transfer_discount: int = Field(0, ge=0, le=100_000)
    transfer_window_minutes: float = Field(0, ge=0, le=DAY_SECONDS // 60)
    bands: list[AgeBandSettings] = []
    tearing_window_seconds: float = Field(
        30, gt=0, le=DAY_SECONDS, description="how long a torn debit waits for its card"
    )
    psam_key_index: int = Field(1, ge=0, le=255)
    station: str = Field("0", pattern=LINE_PATTERN, description="station code, BCD-coded in the card's 0x1E log")
    operator_code: str = Field("0", pattern=LINE_PATTERN, description="operator code, BCD after the station in 0x1E")
    city_code: str | None = Field(
        None,
        pattern=r"^[0-9]{4}$",
        description="the operator's city code (4 BCD digits) in the card's 0x1E log; unset: the card's issuing city",
    )
    acquirer: str = Field(
        "FFFFFFFFFFFFFFFF",
        pattern=r"^[0-9A-Fa-f]{16}$",
        description="the operator's acquirer institution (8 bytes, hex) written into the card's 0x1E log",
    )
    on_birth_date_unreadable: Literal["full_fare", "refuse"] = Field(
        "full_fare",
        description="when the PSAM cannot authenticate the SSSE, so no age band can be read: charge or refuse",
    )
    whitelist: WhitelistSettings | None = Field(
        None, description="home cities and the issuers of other cities served; unset: every T-Union card"
    )
    fares: FareTableSettings | None = Field(
        None, description="time bands, card types, the transfer rule and the line encoding; unset: the flat fare"
    )

    def fare_rules(self) -> FareRules:
        """The pure fare rules of this section (its flat keys, and [bus.fares] when present)."""
        return bus_fare_rules(
            line=self.line,
            fare=self.fare,
            age_bands=[AgeBand(b.name, b.min_age, b.percent) for b in self.bands],
            transfer_discount=self.transfer_discount,
            transfer_window_minutes=self.transfer_window_minutes,
            fares=self.fares,
        )

    @model_validator(mode="after")
    def _fares_fit(self) -> BusSettings:
        """A doubled transfer or a line the 0x1E encoding cannot carry fails at check-config."""
        if len(self.fare_rules().line_code) != LINE_CODE_BYTES:
            raise ValueError(f"a 0x1E record holds a line in {LINE_CODE_BYTES} bytes: [bus.fares.line_code] width = 2")
        return self

    @field_validator("bands")
    @classmethod
    def _distinct_ages(cls, bands: list[AgeBandSettings]) -> list[AgeBandSettings]:
        ages = [band.min_age for band in bands]
        if len(set(ages)) != len(ages):
            raise ValueError("two bands start at the same age; each min_age may appear once")
        return bands


class HolderSettings(_Section):
    """Library gates and pharmacy POS: which cards are served."""

    accepted_regions: list[Region] = Field(min_length=1)
    gate_open_seconds: float = Field(3.0, gt=0, le=60)


class MealPeriodSettings(_Section):
    """One meal period of a canteen, in the terminal's local time: from `start` until before `end`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="1 to 32 letters, digits, '_' or '-'")
    start: str = Field(pattern=CLOCK_PATTERN)
    end: str = Field(pattern=CLOCK_PATTERN)

    @model_validator(mode="after")
    def _start_before_end(self) -> MealPeriodSettings:
        if self.end <= self.start:
            raise ValueError(f"meal period {self.name!r} must end after it starts (and not span midnight)")
        return self


class CanteenSettings(_Section):
    """A community canteen's POS reader: the holder's age band prices the meal; amounts in fen."""

    accepted_regions: list[Region] = Field(min_length=1)
    price: int | None = Field(
        None,
        gt=0,
        le=100_000,
        description="the fixed meal price; unset: the canteen POS sets each price through the local API",
    )
    pos_price_seconds: float = Field(
        60, gt=0, le=600, description="how long a price set by the POS waits for its card, at most"
    )
    payment: Literal["purse", "pos"] = Field(
        "purse", description="'purse': charged to the T-Union e-purse; 'pos': the amount goes back to the POS"
    )
    bands: list[AgeBandSettings] = []
    meals: list[MealPeriodSettings] = []
    discounted_meals: int = Field(
        1, ge=1, le=20, description="discounted meals per card per meal period per day; beyond: full price"
    )
    repeat_seconds: float = Field(
        30, ge=0, le=3600, description="a second tap of the same card at a fixed price within this is refused"
    )
    on_birth_date_unreadable: Literal["full_price", "refuse"] = Field(
        "full_price",
        description="when the PSAM cannot authenticate the SSSE, so no age band can be read: full price or refuse",
    )
    tearing_window_seconds: float = Field(
        30, gt=0, le=DAY_SECONDS, description="how long a torn debit waits for its card"
    )
    psam_key_index: int = Field(1, ge=0, le=255)
    canteen_code: str = Field("0", pattern=LINE_PATTERN, description="the canteen's code in the card's 0x1E log")
    operator_code: str = Field("0", pattern=LINE_PATTERN, description="operator code, BCD in the card's 0x1E log")
    city_code: str | None = Field(
        None,
        pattern=r"^[0-9]{4}$",
        description="the operator's city code (4 BCD digits) in the card's 0x1E log; unset: the card's issuing city",
    )
    acquirer: str = Field(
        "FFFFFFFFFFFFFFFF",
        pattern=r"^[0-9A-Fa-f]{16}$",
        description="the operator's acquirer institution (8 bytes, hex) written into the card's 0x1E log",
    )

    @field_validator("bands")
    @classmethod
    def _distinct_ages(cls, bands: list[AgeBandSettings]) -> list[AgeBandSettings]:
        ages = [band.min_age for band in bands]
        if len(set(ages)) != len(ages):
            raise ValueError("two bands start at the same age; each min_age may appear once")
        return bands

    @field_validator("meals")
    @classmethod
    def _separate_meals(cls, meals: list[MealPeriodSettings]) -> list[MealPeriodSettings]:
        """A tap falls in one meal period at most, so the cap it counts against is never in doubt."""
        names = [meal.name for meal in meals]
        if len(set(names)) != len(names):
            raise ValueError("two meal periods have the same name")
        ordered = sorted(meals, key=lambda meal: meal.start)
        for earlier, later in itertools.pairwise(ordered):
            if later.start < earlier.end:
                raise ValueError(f"meal periods {earlier.name!r} and {later.name!r} overlap")
        return meals


class VenueBandSettings(_Section):
    """From `min_age` on, entry costs `price` fen (0 = free)."""

    name: str
    min_age: int = Field(ge=0, le=150)
    price: int = Field(ge=0, le=100_000)


class VenueSettings(_Section):
    """A venue gate (museum, scenic spot, library entry): who enters, at what price; amounts in fen."""

    accepted_regions: list[Region] = Field(min_length=1)
    price: int = Field(0, ge=0, le=100_000, description="the entry price of a holder in no age band")
    bands: list[VenueBandSettings] = []
    reservations: Path | None = Field(
        None,
        description="an absolute path to the reservation list (JSON) the back office delivers; "
        "set: entry needs a reservation; re-read on SIGHUP",
    )
    early_minutes: float = Field(0, ge=0, le=240, description="how early before its slot a reservation admits")
    daily_capacity: int | None = Field(None, ge=1, le=1_000_000, description="entries a day at most; unset: no limit")
    once_a_day: bool = Field(True, description="one entry per card per day")
    gate_open_seconds: float = Field(3.0, gt=0, le=60, description="how long the gate relay stays open")

    @field_validator("bands")
    @classmethod
    def _distinct_ages(cls, bands: list[VenueBandSettings]) -> list[VenueBandSettings]:
        ages = [band.min_age for band in bands]
        if len(set(ages)) != len(ages):
            raise ValueError("two bands start at the same age; each min_age may appear once")
        return bands

    @field_validator("reservations")
    @classmethod
    def _absolute_reservations(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path, such as /var/lib/sscard/reservations.json")
        return value


class ApiSettings(_Section):
    """The local API: loopback only, or a unix socket."""

    listen: str = Field("127.0.0.1:8787", pattern=LISTEN_PATTERN)
    token: SecretRef

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        """The pattern admits five digits; the socket would refuse 0 or 99999 only at start."""
        if not value.startswith("unix:"):
            port = int(value.rpartition(":")[2])
            if not 1 <= port <= 65_535:
                raise ValueError(f"the port must be 1 to 65535, not {port}")
        return value


class UplinkSection(_Section):
    """One queue feeds one uplink: with two, each would delete what the other has not sent."""

    http: HttpUplinkSettings = HttpUplinkSettings()
    mqtt: MqttUplinkSettings = MqttUplinkSettings()

    @model_validator(mode="after")
    def _one_uplink(self) -> UplinkSection:
        if self.http.enabled and self.mqtt.enabled:
            raise ValueError("enable either uplink.http or uplink.mqtt, not both (one queue feeds one uplink)")
        return self


class Config(_Section):
    """The whole file."""

    terminal: TerminalSettings
    bus: BusSettings | None = None
    library: HolderSettings | None = None
    pharmacy: HolderSettings | None = None
    canteen: CanteenSettings | None = None
    venue: VenueSettings | None = None
    api: ApiSettings | None = None
    readers: ReaderSettings = ReaderSettings()
    queue: QueueSettings = QueueSettings()
    uplink: UplinkSection = UplinkSection()
    hotlist: HotlistSettings = HotlistSettings()
    parameters: ParameterSettings = ParameterSettings()

    @model_validator(mode="after")
    def _parameters_signed(self) -> Config:
        """Parameters from the back office are taken only under its key; say so at check-config."""
        if self.parameters.source != "none":
            self.parameters.key_bytes(self.hotlist)
            if self.parameters.source == "http" and not self.parameters.http_url:
                raise ValueError("parameters source 'http' needs http_url")
            if self.parameters.source == "mqtt" and not self.uplink.mqtt.enabled:
                raise ValueError("parameters source 'mqtt' needs the MQTT uplink ([uplink.mqtt] enabled)")
        return self


# ---------------------------------------------------------------------- error messages


def _key_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(bare type, constraint metadata, optional) of an annotation."""
    metadata: list[Any] = []
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        elif origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            optional = optional or len(members) < len(typing.get_args(annotation))
            if len(members) != 1:
                return annotation, metadata, optional
            annotation = members[0]
        else:
            return annotation, metadata, optional


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_text(annotation: Any) -> str:
    bare, metadata, _ = _unwrap(annotation)
    return _with_constraints(_bare_text(bare), metadata)


def _bare_text(bare: Any) -> str:
    if typing.get_origin(bare) is Literal:
        return "one of " + ", ".join(repr(value) for value in typing.get_args(bare))
    if typing.get_origin(bare) is list:
        (item,) = typing.get_args(bare)
        return f"a list, each item {_type_text(item)}"
    if _is_model(bare):
        required = [name for name, field in bare.model_fields.items() if field.is_required()]
        return f"a table ({'keys ' + ', '.join(required) + ' required' if required else 'all keys optional'})"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a file path"}
    return names.get(bare, getattr(bare, "__name__", str(bare)))


def _with_constraints(text: str, metadata: list[Any]) -> str:
    bounds: list[str] = []
    for item in metadata:
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            return _PATTERN_HINTS.get(pattern, f"{text} matching the regular expression {pattern}")
        if isinstance(item, annotated_types.Gt):
            bounds.append(f"greater than {item.gt}")
        elif isinstance(item, annotated_types.Ge):
            bounds.append(f"at least {item.ge}")
        elif isinstance(item, annotated_types.Lt):
            bounds.append(f"less than {item.lt}")
        elif isinstance(item, annotated_types.Le):
            bounds.append(f"at most {item.le}")
        elif isinstance(item, annotated_types.MinLen):
            bounds.append(f"with at least {item.min_length} item{'s' if item.min_length != 1 else ''}")
    return f"{text}, {' and '.join(bounds)}" if bounds else text


def _node_at(location: tuple[Any, ...]) -> tuple[Any, FieldInfo | None]:
    """The annotation (and field) that a validation error's location points at; None if unknown."""
    annotation: Any = Config
    field: FieldInfo | None = None
    for part in location:
        bare, _, _ = _unwrap(annotation)
        if isinstance(part, str) and _is_model(bare) and part in bare.model_fields:
            field = bare.model_fields[part]
            annotation = field.annotation
            if field.metadata:
                annotation = Annotated[(annotation, *field.metadata)]
        elif isinstance(part, int) and typing.get_origin(bare) is list:
            (annotation,) = typing.get_args(bare)
            field = None
        else:
            return None, None
    return annotation, field


def _field_limit(location: tuple[Any, ...]) -> float | None:
    """The upper bound this module adds to a key whose own model has none (see _FIELD_LIMITS)."""
    if not location or not isinstance(location[-1], str) or location[-1] not in _FIELD_LIMITS:
        return None
    _, field = _node_at(location)
    if field is None or any(isinstance(item, annotated_types.Le | annotated_types.Lt) for item in field.metadata):
        return None
    return _FIELD_LIMITS[location[-1]]


def _allowed(location: tuple[Any, ...]) -> str | None:
    """What the key at `location` accepts, from its model; None if the key is unknown."""
    if location in _KEY_HINTS:
        return _KEY_HINTS[location]
    annotation, field = _node_at(location)
    if annotation is None:
        return None
    bare, metadata, _ = _unwrap(annotation)
    limit = _field_limit(location)
    if limit is not None:
        metadata = [*metadata, annotated_types.Le(limit)]
    text = _with_constraints(_bare_text(bare), metadata)
    hinted = any(getattr(item, "pattern", None) in _PATTERN_HINTS for item in metadata)
    if field is not None and field.description and not hinted:
        text += f" ({field.description})"
    return text


def _allowed_keys(location: tuple[Any, ...]) -> list[str] | None:
    annotation, _ = _node_at(location)
    bare, _, _ = _unwrap(annotation)
    return list(bare.model_fields) if _is_model(bare) else None


def _message(issue: Any) -> str:
    location = tuple(issue["loc"])
    kind = issue["type"]
    allowed = _allowed(location)
    if kind == "missing":
        what = "section" if allowed and allowed.startswith("a table") else "key"
        return f"required {what} is missing; expected {allowed or 'a value'}"
    if kind == "extra_forbidden":
        keys = _allowed_keys(location[:-1])
        where = "section" if len(location) == 1 else "key"
        return f"unknown {where}; allowed here: {', '.join(keys) if keys else 'nothing'}"
    if kind == "value_error":
        text = str(issue["msg"]).removeprefix("Value error, ")
        return f"{text}; expected {allowed}" if location in _KEY_HINTS else text
    if allowed is not None:
        return f"must be {allowed}"
    return str(issue["msg"]).replace("Input should be", "must be")


def _shown(issue: Any) -> str:
    """The value that was found, unless it may be a secret or is a whole table."""
    value = issue["input"]
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(item, dict) for item in value)):
        return ""
    if (issue.get("ctx") or {}).get("pattern") == SECRET_PATTERN:
        return f" (got a value of {len(str(value))} characters, not shown: it may be a secret)"
    text = repr(value)
    return f" (got {text if len(text) <= 80 else text[:77] + '...'})"


def _describe(issue: Any, source: str) -> str:
    """One line per problem: file, dotted key, what is allowed, and what was found."""
    line = f"{source}: {_key_path(issue['loc'])}: {_message(issue)}"
    if issue["type"] != "missing":
        line += _shown(issue)
    return line


# ---------------------------------------------------------------------- loading


def _with_state_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Files whose path is not given live in the terminal's state directory.

    Works on a copy and leaves sections of the wrong type alone: validation reports them.
    """
    raw = dict(raw)
    terminal = raw.get("terminal")
    state_dir = terminal.get("state_dir") if isinstance(terminal, dict) else None
    if not isinstance(state_dir, str):
        state_dir = os.environ.get("STATE_DIRECTORY", "/var/lib/sscard")
    for section, name in (("queue", "queue.sqlite3"), ("hotlist", "hotlist.bin"), ("parameters", "parameters.json")):
        table = raw.get(section, {})
        if isinstance(table, dict) and "path" not in table:
            raw[section] = {**table, "path": str(Path(state_dir) / name)}
    return raw


PROFILES = ("bus", "library", "pharmacy", "canteen", "venue")
"""Every terminal kind; each needs its own section of the same name."""


def _missing_profile_section(raw: dict[str, Any], source: str) -> list[str]:
    terminal = raw.get("terminal")
    profile = terminal.get("profile") if isinstance(terminal, dict) else None
    if profile not in PROFILES or profile in raw:
        return []
    required = _allowed((profile,)) or "a table"
    return [f"{source}: {profile}: required section is missing for terminal.profile = {profile!r}; expected {required}"]


def _secret_paths(config: Config) -> list[tuple[str, Path | None]]:
    """Every uplink key file the configuration will read, under its dotted key."""
    paths: list[tuple[str, Path | None]] = []
    http, mqtt, hotlist = config.uplink.http, config.uplink.mqtt, config.hotlist
    if http.enabled:
        paths.append(("uplink.http.hmac_key_file", http.hmac_key_file))
        paths += _tls_key("uplink.http.tls", http.tls)
    if mqtt.enabled or hotlist.source == "mqtt":
        paths.append(("uplink.mqtt.password_file", mqtt.password_file))
        paths += _tls_key("uplink.mqtt.tls", mqtt.tls)
    if hotlist.source == "http":
        paths += _tls_key("hotlist.tls", hotlist.tls)
    return paths


def _tls_key(key: str, tls: TlsSettings | None) -> list[tuple[str, Path | None]]:
    if tls is None or tls.client_cert_file is None:
        return []
    # Without client_key_file the key sits in the certificate file.
    if tls.client_key_file is None:
        return [(f"{key}.client_cert_file", tls.client_cert_file)]
    return [(f"{key}.client_key_file", tls.client_key_file)]


def _relative_secret_paths(config: Config, source: str) -> list[str]:
    """A key file given as a relative path is most likely the secret itself, pasted inline."""
    return [
        f"{source}: {key}: must be an absolute path to the file holding the secret (such as"
        f" /run/credentials/sscard.service/NAME), never the secret itself"
        f" (got a relative value of {len(str(path))} characters, not shown: it may be a secret)"
        for key, path in _secret_paths(config)
        if path is not None and not path.is_absolute()
    ]


def secret_references(config: Config) -> list[tuple[str, str]]:
    """(dotted key, `file:`/`credential:` reference) of every secret the daemon will read."""
    references = [("terminal.token_key", config.terminal.token_key)]
    if config.api is not None:
        references.append(("api.token", config.api.token))
    references += [(key, f"file:{path}") for key, path in _secret_paths(config) if path is not None]
    return references


def _certificate_files(config: Config) -> list[tuple[str, Path]]:
    """The TLS trust anchors and client certificates the uplinks in use load at start."""
    in_use: list[tuple[str, TlsSettings | None]] = []
    http, mqtt, hotlist = config.uplink.http, config.uplink.mqtt, config.hotlist
    if http.enabled:
        in_use.append(("uplink.http.tls", http.tls))
    if mqtt.enabled or hotlist.source == "mqtt":
        in_use.append(("uplink.mqtt.tls", mqtt.tls))
    if hotlist.source == "http":
        in_use.append(("hotlist.tls", hotlist.tls))
    return [
        (f"{key}.{name}", path)
        for key, tls in in_use
        if tls is not None
        for name, path in (("ca_file", tls.ca_file), ("client_cert_file", tls.client_cert_file))
        if path is not None and (name == "client_cert_file" or tls.verify)
    ]


def _secret_problems(config: Config, source: str) -> list[str]:
    """One line per referenced secret that cannot be read."""
    problems: list[str] = []
    for key, ref in secret_references(config):
        try:
            read_secret(ref)
        except ConfigError as error:
            problems.append(f"{source}: {key}: {error}")
    return problems


def check_secrets(config: Config, source: str) -> None:
    """Read every referenced secret; raises ConfigError with one line per secret that cannot be used.

    The TLS certificate files are looked at too (see `check_files`): the uplinks load them
    at start with the keys.
    """
    check_environment(config, source, secrets=True)


def check_files(config: Config, source: str) -> None:
    """Look at every file and directory the configuration names; raises ConfigError, one line each.

    No secret is read: this is what `check-config` does without `--secrets`.
    """
    check_environment(config, source, secrets=False)


def check_environment(config: Config, source: str, *, secrets: bool, at_start: bool = False) -> None:
    """The checks that depend on this machine: files and directories, and with `secrets` the keys.

    A certificate file that also holds the private key is both: it is reported once. With
    `at_start` (`sscard run`), what systemd creates when the unit starts must be there now.
    """
    problems = _file_problems(config, source, at_start=at_start)
    if secrets:
        reported = {line.split(": ", 2)[1] for line in problems}
        problems = [
            line for line in _secret_problems(config, source) if line.split(": ", 2)[1] not in reported
        ] + problems
    if problems:
        raise ConfigError("\n".join(problems))


def _file_problems(config: Config, source: str, *, at_start: bool) -> list[str]:
    state_dir = config.terminal.state_dir
    problems = [f"{source}: terminal.state_dir: {text}" for text in _directory_problems(state_dir)]
    for key, path in (("queue.path", config.queue.path), ("hotlist.path", config.hotlist.path)):
        if problems and path.is_relative_to(state_dir):
            continue  # in the state directory (by default): its problem is already named
        problems += [f"{source}: {key}: {text}" for text in _file_place_problems(path)]
    if config.api is not None and config.api.listen.startswith("unix:"):
        socket_path = Path(config.api.listen.removeprefix("unix:"))
        problems += [f"{source}: api.listen: {text}" for text in _socket_place_problems(socket_path)]
        if at_start and not socket_path.parent.is_dir() and not any(": api.listen: " in line for line in problems):
            problems.append(
                f"{source}: api.listen: the directory {socket_path.parent} of the socket is not there"
                " (the unit's RuntimeDirectory= creates /run/sscard; elsewhere, create it first)"
            )
    for key, path in _certificate_files(config):
        problem = _certificate_problem(path, ca=key.endswith(".ca_file"))
        if problem is not None:
            problems.append(f"{source}: {key}: {problem}")
    return problems


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or other special file"


def _directory_problems(path: Path) -> list[str]:
    """A directory the daemon writes to: there, or creatable (every existing parent a directory)."""
    try:
        if path.exists():
            if not path.is_dir():
                return [f"{path} is {_kind(path)}; it must be a directory (or not exist yet, to be created)"]
            return []
        ancestor = _nearest_existing(path)
        if not ancestor.is_dir():
            return [f"{path} cannot be created: {ancestor} is {_kind(ancestor)}, not a directory"]
    except OSError as error:
        return [f"cannot look at {path}: {error.strerror}"]
    return []


def _file_place_problems(path: Path) -> list[str]:
    """A file the daemon creates or opens: not a directory, and its directory there or creatable."""
    try:
        if path.exists() and not path.is_file():
            return [f"{path} is {_kind(path)}; it must be a file (or not exist yet, to be created)"]
    except OSError as error:
        return [f"cannot look at {path}: {error.strerror}"]
    return [
        text.replace(str(path.parent), f"the directory {path.parent}", 1) for text in _directory_problems(path.parent)
    ]


def _socket_place_problems(path: Path) -> list[str]:
    """The API's socket: replaced at start if it is a socket, so anything else in its place is wrong.

    Its directory is usually systemd's RuntimeDirectory=, created when the unit starts, so a
    missing one is only wrong if it cannot be created.
    """
    try:
        if path.exists() and not path.is_socket():
            return [f"unix:{path} is {_kind(path)}; the API needs the place for its socket"]
    except OSError as error:
        return [f"cannot look at {path}: {error.strerror}"]
    return [
        text.replace(str(path.parent), f"the directory {path.parent}", 1) for text in _directory_problems(path.parent)
    ]


def _certificate_problem(path: Path, *, ca: bool) -> str | None:
    """A CA or client certificate file: a readable file in PEM form, as the uplink's TLS loads it."""
    try:
        if path.exists() and not path.is_file():
            return f"{path} is {_kind(path)}; it must be a certificate file (PEM)"
        data = path.read_bytes()
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    if ca:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
        except ssl.SSLError as error:
            return f"{path} holds no usable CA certificate (PEM): {error.reason or error}"
        return None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return f"{path} holds no certificate: expected PEM text with -----BEGIN CERTIFICATE-----"
    return None


# ---------------------------------------------------------------------- values out of reach

NESTING_LIMIT = 32
"""Arrays and tables nested deeper than this are no configuration: refused before validation."""


def _leaves(raw: dict[str, Any], source: str) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value under its location, without recursion (the depth is what is being checked)."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), raw)]
    while stack:
        location, value = stack.pop()
        if len(location) > NESTING_LIMIT:
            raise ConfigError(
                f"{source}: {_key_path(location[:2])}: nested more than {NESTING_LIMIT} levels deep;"
                f" configuration values are at most {NESTING_LIMIT} arrays or tables deep"
            )
        if isinstance(value, dict):
            stack += [((*location, key), child) for key, child in value.items()]
        elif isinstance(value, list):
            stack += [((*location, index), child) for index, child in enumerate(value)]
        else:
            yield location, value


def _out_of_reach(value: Any) -> bool:
    """inf, nan, and integers wider than SQLite's: no setting can mean them."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX


def _replace_at(document: Any, location: tuple[Any, ...], value: Any) -> None:
    for part in location[:-1]:
        document = document[part]
    document[location[-1]] = value


def _finite_text(location: tuple[Any, ...], value: Any) -> str:
    allowed = _allowed(location) or "a number"
    if isinstance(value, float) and allowed.startswith("a number"):
        allowed = "a finite number" + allowed.removeprefix("a number")
    elif isinstance(value, int):
        allowed = f"{allowed}, and at most {INT64_MAX}"
    return f"must be {allowed} (got {value!r})"


def _beyond_limits(model: BaseModel, location: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], float]]:
    """Keys of the composed models that exceed the bounds of _FIELD_LIMITS."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        here = (*location, name)
        if isinstance(value, BaseModel):
            yield from _beyond_limits(value, here)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            limit = _field_limit(here)
            if limit is not None and value > limit:
                yield here, value


def _start_problems(config: Config, source: str) -> list[str]:
    """What the daemon's parts would refuse only when they are built at start, found now."""
    problems: list[str] = []
    mqtt, http, hotlist = config.uplink.mqtt, config.uplink.http, config.hotlist
    mqtt_used = mqtt.enabled or hotlist.source == "mqtt"
    if mqtt_used and not mqtt.host.strip():
        problems.append(f"{source}: uplink.mqtt.host: must be the broker's host name or address (got '')")
    if mqtt.enabled and ("#" in mqtt.topic or "+" in mqtt.topic or not mqtt.topic):
        problems.append(
            f"{source}: uplink.mqtt.topic: must be a topic to publish to, without the wildcards + and #"
            f" (got {mqtt.topic!r})"
        )
    if mqtt_used and mqtt.password_file is not None and mqtt.username is None:
        problems.append(f"{source}: uplink.mqtt.password_file: given without uplink.mqtt.username; set both or neither")
    if hotlist.source == "mqtt" and not hotlist.mqtt_topic:
        problems.append(f"{source}: hotlist.mqtt_topic: must be the retained topic of the hotlist (got '')")
    if http.enabled and http.url is not None:
        problems += _url_problems(source, "uplink.http.url", http.url)
    if hotlist.source == "http" and hotlist.http_url is not None:
        problems += _url_problems(source, "hotlist.http_url", hotlist.http_url)
    if http.enabled and not _HEADER_NAME.fullmatch(http.signature_header):
        problems.append(
            f"{source}: uplink.http.signature_header: must be an HTTP header name (letters, digits and"
            f" -!#$%&'*+.^_`|~) (got {http.signature_header!r})"
        )
    return problems


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _url_problems(source: str, key: str, url: str) -> list[str]:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as error:
        return [f"{source}: {key}: must be an http(s) URL: {error} (got {url!r})"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [
            f"{source}: {key}: must be an http(s) URL with a host, such as https://backoffice.example/v1 (got {url!r})"
        ]
    return []


def parse_config(raw: dict[str, Any], source: str) -> Config:
    """Validate an already-read TOML document; `source` names it in errors.

    Besides the models' own rules: no inf or nan anywhere, no integer wider than 64 bits,
    no nesting deeper than NESTING_LIMIT, the bounds of _FIELD_LIMITS, and what the
    daemon's parts would refuse at start. Files and secrets are `check_environment`'s.
    """
    problems = _missing_profile_section(raw, source)
    document = _with_state_defaults(raw)
    unreachable = [(location, value) for location, value in _leaves(document, source) if _out_of_reach(value)]
    if unreachable:
        document = json.loads(json.dumps(document, default=str, allow_nan=True))
        for location, _ in unreachable:
            _replace_at(document, location, None)
    reported = {location for location, _ in unreachable if _node_at(location)[0] is not None}
    problems = [
        f"{source}: {_key_path(location)}: {_finite_text(location, value)}"
        for location, value in unreachable
        if location in reported
    ] + problems
    # Through JSON so that validation can be strict (no "200" for 200) and still take paths
    # as strings; TOML dates and times become their ISO text.
    text = json.dumps(document, default=str)
    try:
        config = Config.model_validate_json(text, strict=True)
    except ValidationError as error:
        problems += [_describe(issue, source) for issue in error.errors() if tuple(issue["loc"]) not in reported]
        raise ConfigError("\n".join(_ordered(problems))) from None
    problems += [
        f"{source}: {_key_path(location)}: must be {_allowed(location)} (got {value!r})"
        for location, value in _beyond_limits(config)
    ]
    problems += _relative_secret_paths(config, source)
    problems += _start_problems(config, source)
    if problems:
        raise ConfigError("\n".join(_ordered(problems)))
    return config


def _ordered(problems: list[str]) -> list[str]:
    """Each problem once, in the order found."""
    return list(dict.fromkeys(problems))


def load_config(path: Path) -> Config:
    """Read and validate the configuration file at `path`."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    return load_config_bytes(data, str(path))


def load_config_bytes(data: bytes, source: str) -> Config:
    """Validate a configuration read from elsewhere (`check-config -` reads standard input)."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source}: not UTF-8 text at byte {error.start}; the file must be UTF-8 TOML") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error
    except RecursionError:
        raise ConfigError(
            f"{source}: not valid TOML for sscard: arrays or inline tables nested too deeply"
            f" (configuration values are at most {NESTING_LIMIT} levels deep)"
        ) from None
    return parse_config(raw, source)
