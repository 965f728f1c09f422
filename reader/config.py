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

import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from reader.backends.settings import ReaderSettings
from reader.uplink.settings import HotlistSettings, HttpUplinkSettings, MqttUplinkSettings, QueueSettings, TlsSettings

EX_CONFIG = 78


class ConfigError(Exception):
    """The configuration cannot be used; the message names file, key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SECRET_PATTERN = r"^(file:/.+|credential:[A-Za-z0-9_.-]+)$"
TERMINAL_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
REGION_PATTERN = r"^[0-9]{1,6}$"
LINE_PATTERN = r"^[0-9]{1,4}$"
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

    line: str = Field(pattern=LINE_PATTERN, description="line number, BCD-coded in the card's 0x1E log")
    fare: int = Field(gt=0, le=100_000)
    accepted_regions: list[Region] = Field(min_length=1)
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
            raise ValueError("two bands start at the same age; each min_age may appear once")
        return bands


class HolderSettings(_Section):
    """Library gates and pharmacy POS: which cards are served."""

    accepted_regions: list[Region] = Field(min_length=1)
    gate_open_seconds: float = Field(3.0, gt=0, le=60)


class ApiSettings(_Section):
    """The local API: loopback only, or a unix socket."""

    listen: str = Field("127.0.0.1:8787", pattern=LISTEN_PATTERN)
    token: SecretRef


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
    api: ApiSettings | None = None
    readers: ReaderSettings = ReaderSettings()
    queue: QueueSettings = QueueSettings()
    uplink: UplinkSection = UplinkSection()
    hotlist: HotlistSettings = HotlistSettings()


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


def _allowed(location: tuple[Any, ...]) -> str | None:
    """What the key at `location` accepts, from its model; None if the key is unknown."""
    if location in _KEY_HINTS:
        return _KEY_HINTS[location]
    annotation, field = _node_at(location)
    if annotation is None:
        return None
    bare, metadata, _ = _unwrap(annotation)
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
    for section, name in (("queue", "queue.sqlite3"), ("hotlist", "hotlist.bin")):
        table = raw.get(section, {})
        if isinstance(table, dict) and "path" not in table:
            raw[section] = {**table, "path": str(Path(state_dir) / name)}
    return raw


def _missing_profile_section(raw: dict[str, Any], source: str) -> list[str]:
    terminal = raw.get("terminal")
    profile = terminal.get("profile") if isinstance(terminal, dict) else None
    if profile not in ("bus", "library", "pharmacy") or profile in raw:
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


def check_secrets(config: Config, source: str) -> None:
    """Read every referenced secret; raises ConfigError with one line per secret that cannot be used.

    The TLS certificate files are looked at too: the uplinks load them at start with the keys.
    """
    problems: list[str] = []
    for key, ref in secret_references(config):
        try:
            read_secret(ref)
        except ConfigError as error:
            problems.append(f"{source}: {key}: {error}")
    keys = {key for key, _ in secret_references(config)}
    for key, path in _certificate_files(config):
        if key in keys:
            continue  # a certificate file that also holds the key was read above
        try:
            path.read_bytes()
        except OSError as error:
            problems.append(f"{source}: {key}: cannot read {path}: {error.strerror}")
    if problems:
        raise ConfigError("\n".join(problems))


def parse_config(raw: dict[str, Any], source: str) -> Config:
    """Validate an already-read TOML document; `source` names it in errors."""
    problems = _missing_profile_section(raw, source)
    # Through JSON so that validation can be strict (no "200" for 200) and still take paths
    # as strings; TOML dates and times become their ISO text.
    document = json.dumps(_with_state_defaults(raw), default=str)
    try:
        config = Config.model_validate_json(document, strict=True)
    except ValidationError as error:
        problems = [_describe(issue, source) for issue in error.errors()] + problems
        raise ConfigError("\n".join(problems)) from None
    problems += _relative_secret_paths(config, source)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def load_config(path: Path) -> Config:
    """Read and validate the configuration file at `path`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text at byte {error.start}; the file must be UTF-8 TOML") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    return parse_config(raw, str(path))
