"""Operator parameters from the back office (issuer whitelist, fare table), applied without restart.

A parameter bundle is a JSON document the back office signs with the same Ed25519 key as the
hotlist. On the wire (HTTP body or MQTT payload) it is an envelope, UTF-8 JSON:

    {"format": "sscard-parameters/1",
     "payload": "<base64 of the bundle's JSON bytes>",
     "signature": "<base64 of the Ed25519 signature (RFC 8032, pure) of those bytes>"}

The signature covers the payload's bytes exactly as sent, so neither side needs a canonical
JSON form. The bundle itself:

    {"version": 12,                                # >= 1, each bundle newer than the last
     "issued": "2026-12-04T21:00:00+08:00",        # with its UTC offset
     "whitelist": {...} | null,                    # as [bus.whitelist]; null: the file's stays
     "fares": {"base": 200, ...}}                  # as [bus.fares], plus base and age_bands

A bundle's fare table replaces the whole fare side of `[bus]` (fare, bands, transfer,
`[bus.fares]`); its whitelist replaces `[bus.whitelist]`, and a bundle without one leaves
the configuration's whitelist in force (`Parameters.issuers` None), so that leaving it out
never opens the validator to every card.

`ParameterStore` holds the bundle in force and swaps it atomically: a reader takes
`current()` once per tap and decides the whole tap with that one snapshot. A bundle is
refused whole, the one in force kept and a typed error logged and raised, when its envelope
or JSON is malformed, its signature does not verify, its version is not newer than the one
in force, or its content does not check out (the same validation as the TOML tables, and
the terminal's own line must have a code in the table). A bundle taken is written beside the
state (the envelope as received, written to a new file, synced, renamed over the old one),
and re-verified when the terminal starts, so a restart keeps the last good bundle and a file
altered on disk is not trusted.

Delivery: `HttpParameterSync` polls with If-None-Match (the entity tag of the bundle in
force, kept beside it) and `X-Parameters-Version`, 304 meaning nothing new;
`MqttParameterSync` takes the retained message of its topic. A stale bundle (older than
the one in force, as a retained message is after an HTTP delivery) is ignored, not a fault.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
import paho.mqtt.client as mqtt
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from reader.backoff import Backoff
from reader.daemon.fare_settings import BundleFares, FareRules, WhitelistSettings
from reader.daemon.fares import IssuerRules
from reader.log import get_logger
from reader.uplink.errors import UplinkConfigError, UplinkError
from reader.uplink.hotlist import _write_atomically, public_key
from reader.uplink.mqtt_session import MqttConnectError, Session, new_client, open_session
from reader.uplink.settings import HotlistSettings, MqttUplinkSettings, ParameterSettings
from reader.uplink.tls import client_context
from reader.uplink.worker import UplinkWorker

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ENVELOPE_FORMAT = "sscard-parameters/1"
VERSION_HEADER = "X-Parameters-Version"
MAX_VERSION = 2**63 - 1
"""SQLite's INTEGER: the tap queue stores the version with each record."""


class ParameterError(UplinkError):
    """Base of the parameter errors; the bundle in force is kept whenever one is raised."""

    kind = "parameter_error"


class ParameterFormatError(ParameterError):
    """The envelope or the bundle is not what the format says (bad JSON, base64, fields, content)."""

    kind = "malformed"


class ParameterSignatureError(ParameterError):
    """The bundle is not signed by the configured back-office key."""

    kind = "bad_signature"


class ParameterVersionError(ParameterError):
    """The bundle is not newer than the one in force; `stale` when it is older (nothing to do)."""

    kind = "not_newer"

    def __init__(self, message: str, *, stale: bool) -> None:
        super().__init__(message)
        self.stale = stale


class ParameterStorageError(ParameterError):
    """The bundle checked out but could not be written beside the state (disk full, read-only)."""

    kind = "storage_failed"


class ParameterFetchError(ParameterError):
    """The parameter source could not be reached or answered something unusable."""

    kind = "fetch_failed"


# --------------------------------------------------------------------------- the bundle


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Envelope(_Strict):
    """The signed wire form."""

    format: Literal["sscard-parameters/1"]
    payload: str
    signature: str


class ParameterBundle(_Strict):
    """What the back office sends: a version, when it was issued, and the tables."""

    version: Annotated[int, Field(ge=1, le=MAX_VERSION)]
    issued: AwareDatetime
    whitelist: WhitelistSettings | None = None
    fares: BundleFares


@dataclass(frozen=True)
class Parameters:
    """One bundle in force, checked and turned into the pure rules (immutable).

    `issuers` is None when the bundle carries no whitelist: the configuration's applies.
    `digest` is the SHA-256 of the signed payload, hex: what the back office can match
    against what it issued.
    """

    version: int
    issued: dt.datetime
    issuers: IssuerRules | None
    fares: FareRules
    digest: str


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ParameterFormatError(f"{what} is not base64: {error}") from None


def encode_bundle(bundle: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The signed envelope of a bundle (what the back office publishes; tests and tools use it)."""
    payload = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return sign_payload(payload, key)


def sign_payload(payload: bytes, key: Ed25519PrivateKey) -> bytes:
    """An envelope around payload bytes exactly as given."""
    envelope = {
        "format": ENVELOPE_FORMAT,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signature": base64.b64encode(key.sign(payload)).decode("ascii"),
    }
    return json.dumps(envelope).encode("utf-8")


def read_bundle(document: bytes, key: Ed25519PublicKey, line: str) -> Parameters:
    """Check an envelope's form, its signature, then the bundle's content, for the terminal's `line`.

    The signature is checked before the payload is parsed: nothing unsigned reaches the
    JSON parser beyond the small envelope. Raises ParameterFormatError or ParameterSignatureError.
    """
    from cryptography.exceptions import InvalidSignature

    try:
        envelope = Envelope.model_validate_json(document, strict=True)
    except ValidationError as error:
        raise ParameterFormatError(f"not a parameter envelope: {_first(error)}") from None
    payload = _b64(envelope.payload, "payload")
    signature = _b64(envelope.signature, "signature")
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise ParameterSignatureError("signature does not verify with the configured public key") from None
    try:
        bundle = ParameterBundle.model_validate_json(payload, strict=True)
        fares = bundle.fares.rules(line)
    except ValidationError as error:
        raise ParameterFormatError(f"bundle content refused: {_first(error)}") from None
    except ValueError as error:
        raise ParameterFormatError(f"bundle content refused: {error}") from None
    return Parameters(
        version=bundle.version,
        issued=bundle.issued,
        issuers=bundle.whitelist.to_rules() if bundle.whitelist is not None else None,
        fares=fares,
        digest=hashlib.sha256(payload).hexdigest(),
    )


def _first(error: ValidationError) -> str:
    """The first problem of a validation error, with its location: enough for a log line."""
    issue = error.errors()[0]
    where = ".".join(str(part) for part in issue["loc"]) or "document"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {issue['msg']}{more}"


# --------------------------------------------------------------------------- the store


class ParameterStore:
    """The bundle in force, persisted at `path`, swapped atomically on `receive`.

    `current()` is a plain reference read: a tap takes it once and keeps it. Writers
    (the sync workers, an operator's tool) serialise on a lock.
    """

    def __init__(self, path: Path, key: Ed25519PublicKey, *, line: str) -> None:
        self._path = Path(path)
        self._etag_path = self._path.with_name(self._path.name + ".etag")
        self._key = key
        self._line = line
        self._lock = threading.Lock()
        self._log = get_logger(component="parameters", path=str(self._path))
        self._current: Parameters | None = None
        self._etag: str | None = None
        try:
            document = self._path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as error:
            self._log.error("parameters_on_disk_unreadable", error=str(error))
            return
        try:
            self._current = read_bundle(document, key, line)
        except ParameterError as error:
            # Kept for inspection; the next delivery replaces it. The TOML tables apply meanwhile.
            self._log.error("parameters_on_disk_unusable", error_kind=error.kind, error=str(error))
            return
        if self._etag_path.exists():
            self._etag = self._etag_path.read_text(encoding="utf-8").strip() or None
        self._log.info("parameters_loaded", version=self._current.version)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def etag(self) -> str | None:
        """The HTTP entity tag of the bundle in force, if it came over HTTP."""
        return self._etag

    def current(self) -> Parameters | None:
        """The bundle in force, None before any was received (the configuration's tables apply)."""
        return self._current

    @property
    def version(self) -> int | None:
        current = self._current
        return None if current is None else current.version

    def receive(self, document: bytes, etag: str | None = None) -> Parameters:
        """Verify a delivered bundle and put it in force; on any error the bundle in force stays.

        The same bundle delivered again (same version, same payload) changes nothing and is
        no error. Raises ParameterFormatError, ParameterSignatureError or ParameterVersionError,
        each logged as `parameters_refused` with its kind.
        """
        try:
            fresh = read_bundle(document, self._key, self._line)
            with self._lock:
                current = self._current
                if current is not None and fresh.version <= current.version:
                    if fresh.version == current.version and fresh.digest == current.digest:
                        self._set_etag(etag)
                        return current
                    raise ParameterVersionError(
                        f"bundle {fresh.version} is not newer than the bundle in force ({current.version})",
                        stale=fresh.version < current.version,
                    )
                try:
                    _write_atomically(self._path, [memoryview(document)])
                except OSError as error:
                    raise ParameterStorageError(f"cannot keep the bundle at {self._path}: {error}") from error
                self._current = fresh
                self._set_etag(etag)
        except ParameterError as error:
            self._log.warning(
                "parameters_refused",
                error_kind=error.kind,
                error=str(error),
                version=self.version,
            )
            raise
        self._log.info(
            "parameters_installed",
            version=fresh.version,
            previous=current.version if current is not None else None,
            issued=fresh.issued.isoformat(),
        )
        return fresh

    def _set_etag(self, etag: str | None) -> None:
        """Remember the entity tag; failing to keep it costs one full download, so it is only logged."""
        try:
            if etag is not None:
                if etag != self._etag:
                    _write_atomically(self._etag_path, [memoryview(etag.encode("utf-8"))])
            else:
                self._etag_path.unlink(missing_ok=True)
        except OSError as error:
            self._log.warning("parameters_etag_not_kept", error=str(error))
            etag = None
        self._etag = etag


def decision_versions(parameters: Parameters | None, hotlist_number: int | None) -> dict[str, int | None]:
    """What a tap record carries to say which rules decided it: `{"parameters": 12, "hotlist": 345}`.

    Take both from the snapshots the tap was decided with (`ParameterStore.current()`,
    `HotlistStore.number` read once), not afresh when the record is written.
    """
    return {"parameters": None if parameters is None else parameters.version, "hotlist": hotlist_number}


# --------------------------------------------------------------------------- settings


def parameter_key(settings: ParameterSettings, hotlist: HotlistSettings | None = None) -> Ed25519PublicKey:
    """The back office's key for parameter bundles: `[parameters] public_key`, else the hotlist's."""
    return public_key(settings.key_bytes(hotlist))


# --------------------------------------------------------------------------- delivery


class HttpParameterSync(UplinkWorker):
    """Polls `http_url` every `poll_interval_s` with If-None-Match; 304 means nothing changed."""

    def __init__(
        self,
        store: ParameterStore,
        settings: ParameterSettings,
        *,
        rng: random.Random | None = None,
        name: str = "parameters_http",
    ) -> None:
        super().__init__(name, stall_after_s=settings.connect_timeout_s + settings.read_timeout_s + 30.0)
        if not settings.http_url:
            raise UplinkConfigError("parameters source 'http' needs http_url")
        self._url = settings.http_url
        self._store = store
        self._settings = settings
        self._backoff = Backoff.of(settings.backoff, rng)
        verify = client_context(settings.tls) if self._url.startswith("https:") else False
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.connect_timeout_s,
                pool=settings.connect_timeout_s,
            ),
            verify=verify,
        )

    def _run(self) -> None:
        try:
            while not self.stopping:
                self._beat()
                try:
                    changed = self.fetch_once()
                except ParameterError as exc:
                    delay = self._backoff.next_delay()
                    self._note_error(f"{exc.kind}: {exc}")
                    self._sleep(delay)
                    continue
                self._backoff.reset()
                if changed:
                    self._note_delivered(1)
                self._sleep(self._settings.poll_interval_s)
        finally:
            self._client.close()

    def fetch_once(self) -> bool:
        """One conditional GET; True when a new bundle was put in force."""
        headers = {"Accept": "application/json"}
        if self._store.etag is not None:
            headers["If-None-Match"] = self._store.etag
        if self._store.version is not None:
            headers[VERSION_HEADER] = str(self._store.version)
        try:
            with self._client.stream("GET", self._url, headers=headers) as response:
                if response.status_code == 304:
                    return False
                if response.status_code != 200:
                    raise ParameterFetchError(f"GET {self._url}: {response.status_code} {response.reason_phrase}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self._settings.max_bytes:
                        raise ParameterFetchError(f"bundle larger than {self._settings.max_bytes} bytes")
                etag = response.headers.get("ETag")
        except httpx.HTTPError as exc:
            raise ParameterFetchError(f"GET {self._url}: {type(exc).__name__}: {exc}") from exc
        before = self._store.version
        try:
            installed = self._store.receive(bytes(body), etag)
        except ParameterVersionError as exc:
            if exc.stale:
                return False
            raise
        return installed.version != before


class MqttParameterSync(UplinkWorker):
    """Subscribes (QoS 1, persistent session) to the retained parameter topic."""

    def __init__(
        self,
        store: ParameterStore,
        settings: ParameterSettings,
        broker: MqttUplinkSettings,
        *,
        terminal_id: str,
        rng: random.Random | None = None,
        name: str = "parameters_mqtt",
    ) -> None:
        super().__init__(name, stall_after_s=broker.connect_timeout_s * 2 + 30.0)
        self._store = store
        self._settings = settings
        self._broker = broker
        self._topic = settings.mqtt_topic.replace("{terminal_id}", terminal_id)
        self._client_id = (broker.client_id or f"sscard-{terminal_id}") + "-parameters"
        self._backoff = Backoff.of(broker.reconnect, rng)
        self._session: Session | None = None
        if broker.tls is not None:
            client_context(broker.tls)

    def _connected(self) -> bool | None:
        return self._session is not None

    def _run(self) -> None:
        try:
            while not self.stopping:
                self._beat()
                if self._session is None:
                    self._connect()
                    continue
                rc = self._session.client.loop(0.5)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._note_error(f"connection lost: {mqtt.error_string(rc)}")
                    self._log.warning("parameters_mqtt_disconnected", reason=mqtt.error_string(rc))
                    self._session = None
                    self._sleep(self._backoff.next_delay())
        finally:
            if self._session is not None:
                self._session.client.disconnect()
                self._session = None

    def _connect(self) -> None:
        client = new_client(self._broker, self._client_id)
        client.on_message = self._on_message
        try:
            session = open_session(client, self._broker)
        except MqttConnectError as exc:
            self._note_error(str(exc))
            self._sleep(self._backoff.next_delay())
            return
        result, _mid = client.subscribe([(self._topic, 1)])
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._note_error(f"subscribe failed: {mqtt.error_string(result)}")
            client.disconnect()
            self._sleep(self._backoff.next_delay())
            return
        self._session = session
        self._backoff.reset()
        self._log.info("parameters_mqtt_subscribed", topic=self._topic, session_present=session.session_present)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return  # a cleared retained message: keep the bundle in force
        if len(message.payload) > self._settings.max_bytes:
            self._note_error(f"bundle larger than {self._settings.max_bytes} bytes")
            return
        before = self._store.version
        try:
            self._store.receive(bytes(message.payload))
        except ParameterVersionError as exc:
            if not exc.stale:
                self._note_error(f"{exc.kind}: {exc}")
            return
        except ParameterError as exc:
            self._note_error(f"{exc.kind}: {exc}")
            return
        if self._store.version != before:
            self._note_delivered(1)


__all__ = [
    "ENVELOPE_FORMAT",
    "Envelope",
    "HttpParameterSync",
    "MqttParameterSync",
    "ParameterBundle",
    "ParameterError",
    "ParameterFetchError",
    "ParameterFormatError",
    "ParameterSettings",
    "ParameterSignatureError",
    "ParameterStorageError",
    "ParameterStore",
    "ParameterVersionError",
    "Parameters",
    "decision_versions",
    "encode_bundle",
    "read_bundle",
    "sign_payload",
]
