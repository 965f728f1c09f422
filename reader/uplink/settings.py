"""Settings of the queue, the uplinks and the hotlist, as pydantic models.

The configuration loader composes these under its own TOML sections, so each model is
self-contained, has defaults that work on a terminal, and refers to secrets only by file
path: a configuration file can then be shared or logged without leaking a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STATE_DIR = Path("/var/lib/sscard")


class _Settings(BaseModel):
    """Strict about unknown keys: a misspelt option must fail at start, not be ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueSettings(_Settings):
    """The durable tap queue: where it lives and how much it may hold."""

    path: Path = STATE_DIR / "queue.sqlite3"
    max_taps: int = Field(default=500_000, gt=0, description="refuse new taps beyond this many queued")
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="refuse new taps beyond this many record bytes")
    min_free_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        description="refuse new taps when the file system has less free space than this",
    )
    busy_timeout_s: float = Field(default=10.0, gt=0)
    integrity_check: Literal["quick", "full"] = Field(
        default="quick",
        description="the check that walks the whole file: PRAGMA quick_check or the slower integrity_check",
    )
    after_clean_stop: Literal["cheap", "background", "before_ready"] = Field(
        default="background",
        description=(
            "what a start after a clean stop checks before READY: only the cheap checks (header, schema, "
            "both ends of every b-tree, the totals row); those and the whole-file check in the background; "
            "or the whole-file check before READY as after an unclean stop"
        ),
    )
    prefetch_before_check: bool = Field(
        default=True,
        description=(
            "read the file sequentially before a whole-file check that READY waits for, when it fits in "
            "half the memory available: the check's page-by-page reads then come from the page cache"
        ),
    )
    reclaim_after_pages: int = Field(
        default=1024, ge=1, description="run an incremental vacuum once this many pages are free"
    )
    wal_size_limit_bytes: int = Field(default=4 * 1024 * 1024, ge=0)


class BackoffSettings(_Settings):
    """Exponential backoff with jitter, so a depot full of terminals does not retry in step."""

    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=60.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> BackoffSettings:
        if self.max_s < self.initial_s:
            raise ValueError("backoff max_s must not be below initial_s")
        return self


class TlsSettings(_Settings):
    """Server verification (on unless switched off) and an optional client certificate."""

    verify: bool = True
    ca_file: Path | None = Field(default=None, description="trust anchors; None means the system store")
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    minimum_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if self.client_key_file is not None and self.client_cert_file is None:
            raise ValueError("client_key_file given without client_cert_file")
        return self


class HttpUplinkSettings(_Settings):
    """Batched HTTPS POSTs of taps to the back office."""

    enabled: bool = False
    url: str | None = Field(default=None, description="where batches are POSTed (https://... in service)")
    batch_size: int = Field(default=200, ge=1)
    batch_max_bytes: int = Field(default=512 * 1024, ge=1024)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=15.0, gt=0)
    write_timeout_s: float = Field(default=15.0, gt=0)
    backoff: BackoffSettings = BackoffSettings()
    retry_after_max_s: float = Field(default=600.0, gt=0, description="cap on a server's Retry-After")
    tls: TlsSettings = TlsSettings()
    hmac_key_file: Path | None = Field(default=None, description="per-terminal key for the body signature")
    signature_header: str = "X-Signature"
    idle_poll_s: float = Field(default=1.0, gt=0, description="how often an empty queue is looked at again")

    @model_validator(mode="after")
    def _url_when_enabled(self) -> HttpUplinkSettings:
        if self.enabled and not self.url:
            raise ValueError("the HTTP uplink is enabled but has no url")
        if self.url is not None and not self.url.startswith(("https://", "http://")):
            raise ValueError(f"uplink url must be http(s): {self.url!r}")
        return self


class MqttUplinkSettings(_Settings):
    """MQTT 5 QoS 1 publishes with a persistent session, one topic per terminal."""

    enabled: bool = False
    host: str = "localhost"
    port: int = Field(default=8883, gt=0, lt=65536)
    client_id: str | None = Field(default=None, description="defaults to sscard-<terminal id>")
    username: str | None = None
    password_file: Path | None = None
    topic: str = Field(default="sscard/taps/{terminal_id}", description="{terminal_id} is replaced per tap")
    inflight: int = Field(default=20, ge=1, le=65535, description="unacknowledged publishes at once")
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    keepalive_s: int = Field(default=30, ge=5)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    ack_timeout_s: float = Field(default=30.0, gt=0, description="reconnect when a PUBACK is this late")
    reconnect: BackoffSettings = BackoffSettings(initial_s=1.0, max_s=120.0)
    tls: TlsSettings | None = Field(default=TlsSettings(), description="None means plain TCP")
    idle_poll_s: float = Field(default=1.0, gt=0)


class HotlistSettings(_Settings):
    """The deny list: where it is kept, where fresh versions come from, and whose signature they carry.

    `public_key` is the back office's Ed25519 public key (32 raw bytes, written as 64 hex
    digits or as base64). It is public, so it sits in the configuration itself rather than
    among the credentials. It is required whenever a source is configured: a terminal that
    takes a deny list from the network must be able to tell the back office's list from
    anybody else's.
    """

    path: Path = STATE_DIR / "hotlist.bin"
    source: Literal["none", "http", "mqtt"] = "none"
    public_key: str | None = Field(
        default=None, description="back-office Ed25519 public key, hex or base64 of the 32 raw bytes"
    )
    http_url: str | None = None
    poll_interval_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    tls: TlsSettings = TlsSettings()
    backoff: BackoffSettings = BackoffSettings(initial_s=5.0, max_s=600.0)
    mqtt_topic: str = Field(
        default="sscard/hotlist", description="retained topic; broker settings from the MQTT uplink"
    )
    max_bytes: int = Field(
        default=128 * 1024 * 1024, gt=0, description="refuse larger downloads (16 bytes an entry: 8 million)"
    )

    @model_validator(mode="after")
    def _source_complete(self) -> HotlistSettings:
        if self.source == "http" and not self.http_url:
            raise ValueError("hotlist source 'http' needs http_url")
        if self.public_key is not None:
            self.public_key_bytes()
        elif self.source != "none":
            raise ValueError(f"hotlist source {self.source!r} needs public_key (the back office's Ed25519 key)")
        return self

    def public_key_bytes(self) -> bytes | None:
        """The 32 raw key bytes, None when no key is configured; raises ValueError if malformed."""
        import base64
        import binascii

        if self.public_key is None:
            return None
        text = self.public_key.strip()
        raw: bytes | None = None
        if len(text) == 64:
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raw = None
        if raw is None:
            try:
                raw = base64.b64decode(text, validate=True)
            except binascii.Error:
                raw = b""
        if len(raw) != 32:
            raise ValueError("hotlist public_key must be the 32-byte Ed25519 key as 64 hex digits or base64")
        return raw


class ParameterSettings(_Settings):
    """`[parameters]`: where the bundle is kept, where new ones come from, and whose key signs them.

    `public_key` unset means the hotlist's (`[hotlist] public_key`): one back office, one key.
    """

    path: Path = STATE_DIR / "parameters.json"
    source: Literal["none", "http", "mqtt"] = "none"
    public_key: str | None = Field(default=None, description="back-office Ed25519 key, hex or base64; unset: hotlist's")
    http_url: str | None = None
    poll_interval_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    tls: TlsSettings = TlsSettings()
    backoff: BackoffSettings = BackoffSettings(initial_s=5.0, max_s=600.0)
    mqtt_topic: str = Field(default="sscard/parameters/{terminal_id}", description="retained topic")
    max_bytes: int = Field(default=1024 * 1024, gt=0, description="refuse larger bundles")

    def key_bytes(self, hotlist: HotlistSettings | None = None) -> bytes:
        """The 32 raw key bytes (parsed as the hotlist parses its key); ValueError if there is none."""
        text = self.public_key if self.public_key is not None else (hotlist.public_key if hotlist else None)
        if text is None:
            raise ValueError("parameters need a public key: [parameters] public_key or [hotlist] public_key")
        try:
            raw = HotlistSettings(public_key=text).public_key_bytes()
        except ValidationError as error:
            raise ValueError(f"parameters public_key: {error.errors()[0]['msg']}") from None
        assert raw is not None
        return raw
