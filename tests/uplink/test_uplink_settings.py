"""Settings models: defaults, strictness, secrets by path, and composition from TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from reader.uplink import create_hotlist_sync, create_uplink
from reader.uplink.errors import UplinkConfigError
from reader.uplink.hotlist import HotlistStore
from reader.uplink.hotlist_sync import HttpHotlistSync
from reader.uplink.http_uplink import HttpUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import (
    HotlistSettings,
    HttpUplinkSettings,
    MqttUplinkSettings,
    QueueSettings,
    TlsSettings,
)

RFC8032_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
"""RFC 8032 test 1's Ed25519 public key: a hotlist source needs one."""


class Composed(BaseModel):
    """What a configuration loader would build from its TOML sections."""

    queue: QueueSettings = QueueSettings()
    http: HttpUplinkSettings = HttpUplinkSettings()
    mqtt: MqttUplinkSettings = MqttUplinkSettings()
    hotlist: HotlistSettings = HotlistSettings()


def test_defaults_are_usable() -> None:
    queue = QueueSettings()
    assert queue.max_taps > 0 and queue.max_bytes > 0 and queue.min_free_bytes > 0
    mqtt = MqttUplinkSettings()
    assert mqtt.tls is not None and mqtt.tls.verify  # TLS and verification on by default
    assert HttpUplinkSettings().tls.verify
    assert not HttpUplinkSettings().enabled and not mqtt.enabled


def test_composed_from_toml_with_secrets_as_paths() -> None:
    text = """
    [queue]
    path = "/var/lib/sscard/queue.sqlite3"
    max_taps = 100000

    [http]
    enabled = true
    url = "https://ingest.example/v1/taps"
    hmac_key_file = "/etc/sscard/keys/hmac.key"
    [http.tls]
    client_cert_file = "/etc/sscard/tls/terminal.crt"
    client_key_file = "/etc/sscard/tls/terminal.key"

    [mqtt]
    topic = "fleet/{terminal_id}/taps"
    inflight = 10
    [mqtt.reconnect]
    initial_s = 2.0
    max_s = 300.0

    [hotlist]
    source = "http"
    http_url = "https://ingest.example/v1/hotlist"
    public_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    """
    config = Composed.model_validate(tomllib.loads(text))
    assert config.queue.max_taps == 100_000
    assert config.http.hmac_key_file == Path("/etc/sscard/keys/hmac.key")
    assert config.http.tls.client_key_file == Path("/etc/sscard/tls/terminal.key")
    assert config.mqtt.reconnect.max_s == 300.0
    assert config.hotlist.source == "http"


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (QueueSettings, {"max_tap": 5}),  # misspelt key
        (QueueSettings, {"max_taps": 0}),
        (HttpUplinkSettings, {"enabled": True}),  # no url
        (HttpUplinkSettings, {"url": "ftp://x"}),
        (TlsSettings, {"client_key_file": "/k"}),  # key without certificate
        (HotlistSettings, {"source": "http"}),  # no url
        (MqttUplinkSettings, {"inflight": 0}),
    ],
)
def test_bad_settings_fail_at_start(model: type[BaseModel], values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(values)


def test_one_uplink_per_queue(queue: TapQueue, tmp_path: Path) -> None:
    http = HttpUplinkSettings(enabled=True, url="http://127.0.0.1:9/taps")
    mqtt = MqttUplinkSettings(enabled=True, tls=None)
    with pytest.raises(UplinkConfigError):
        create_uplink(queue, http=http, mqtt=mqtt, terminal_id="VAL-1")
    assert isinstance(create_uplink(queue, http=http, mqtt=MqttUplinkSettings(), terminal_id="VAL-1"), HttpUplink)
    assert create_uplink(queue, http=HttpUplinkSettings(), mqtt=MqttUplinkSettings(), terminal_id="VAL-1") is None
    store = HotlistStore(tmp_path / "hotlist.bin")
    sync = create_hotlist_sync(
        store,
        HotlistSettings(source="http", http_url="http://127.0.0.1:9/h", public_key=RFC8032_KEY),
        mqtt=mqtt,
        terminal_id="VAL-1",
    )
    assert isinstance(sync, HttpHotlistSync)
    assert create_hotlist_sync(store, HotlistSettings(), mqtt=mqtt, terminal_id="VAL-1") is None


def test_missing_key_file_is_a_config_error(queue: TapQueue, tmp_path: Path) -> None:
    settings = HttpUplinkSettings(enabled=True, url="http://127.0.0.1:9/taps", hmac_key_file=tmp_path / "absent")
    with pytest.raises(UplinkConfigError, match="absent"):
        HttpUplink(queue, settings)
