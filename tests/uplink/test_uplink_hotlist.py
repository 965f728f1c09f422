"""The hotlist: document checks, O(1) lookups at 500,000 entries, atomic swaps, HTTP and MQTT sync."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
import pytest

from reader.uplink.errors import HotlistFetchError, HotlistFormatError
from reader.uplink.hotlist import DIGEST_SIZE, Hotlist, HotlistStore, encode_digests, encode_hotlist, token_digest
from reader.uplink.hotlist_sync import HttpHotlistSync, MqttHotlistSync
from reader.uplink.settings import BackoffSettings, HotlistSettings, MqttUplinkSettings
from tests.support.backoffice import BackOfficeServer
from tests.support.mosquitto import MosquittoBroker
from tests.support.waiting import wait_until
from tests.uplink.conftest import BACKOFFICE_PASSWORD, BACKOFFICE_USER, TERMINAL

LISTED = [f"card-{n}".encode() for n in range(100)]
NOT_LISTED = [f"other-{n}".encode() for n in range(100)]


def test_lookup_finds_listed_tokens_only() -> None:
    hotlist = Hotlist.parse(encode_hotlist("2026-11-23.1", LISTED))
    assert hotlist.version == "2026-11-23.1"
    assert len(hotlist) == 100
    assert all(token in hotlist for token in LISTED)
    assert not any(token in hotlist for token in NOT_LISTED)
    assert hotlist.contains_digest(token_digest(LISTED[5]))


def test_empty_list_denies_nothing() -> None:
    assert b"anything" not in Hotlist.empty()
    assert Hotlist.empty().version is None
    empty = Hotlist.parse(encode_hotlist("v0", []))
    assert len(empty) == 0 and LISTED[0] not in empty


def test_half_a_million_entries_in_bounded_memory() -> None:
    digests = [os.urandom(DIGEST_SIZE) for _ in range(500_000)]
    hotlist = Hotlist.parse(encode_digests("big", digests))
    assert len(hotlist) == 500_000
    assert hotlist.memory_bytes() < 11 * 1024 * 1024  # 8 MB of digests + a 2 MB bucket index
    assert all(hotlist.contains_digest(d) for d in digests[::97])
    strangers = [os.urandom(DIGEST_SIZE) for _ in range(20_000)]
    assert sum(hotlist.contains_digest(d) for d in strangers) == 0


def _resealed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda doc: doc[:-1], "length"),
        (lambda doc: doc[:10], "too short"),
        (lambda doc: doc[:-40] + bytes([doc[-40] ^ 1]) + doc[-39:], "checksum"),
        (lambda doc: b"XXXX" + doc[4:], "magic"),
        # Last two entries swapped (and the checksum recomputed): order is checked, not trusted.
        (
            lambda doc: _resealed(doc[: len(doc) - 32 - 2 * DIGEST_SIZE] + doc[-48:-32] + doc[-64:-48]),
            "ascending",
        ),
    ],
)
def test_bad_documents_are_refused(mangle: object, message: str) -> None:
    good = encode_digests("v1", [bytes([0x10]) * 16, bytes([0x80]) * 16, bytes([0xF0]) * 16])
    assert callable(mangle)
    with pytest.raises(HotlistFormatError, match=message):
        Hotlist.parse(mangle(good))


def test_unsupported_format_is_refused() -> None:
    doc = bytearray(encode_hotlist("v1", LISTED))
    struct.pack_into(">B", doc, 4, 2)
    with pytest.raises(HotlistFormatError, match="unsupported"):
        Hotlist.parse(_resealed(bytes(doc[:-32])))


def test_store_swaps_atomically_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hotlist.bin"
    store = HotlistStore(path)
    assert store.version is None and not store.is_listed(LISTED[0])
    store.install(encode_hotlist("v1", LISTED[:50]), etag='"v1"')
    before = store.current
    store.install(encode_hotlist("v2", LISTED[50:]))
    assert before.version == "v1" and LISTED[0] in before  # a held snapshot never changes
    assert store.version == "v2" and LISTED[0] not in store.current and store.is_listed(LISTED[60])
    with pytest.raises(HotlistFormatError):
        store.install(b"garbage")
    assert store.version == "v2"
    assert sorted(p.name for p in path.parent.iterdir()) == ["hotlist.bin"]  # no temporary files left

    reopened = HotlistStore(path)
    assert reopened.version == "v2" and reopened.is_listed(LISTED[60])


def test_unusable_file_on_disk_means_no_list_until_the_next_download(tmp_path: Path) -> None:
    path = tmp_path / "hotlist.bin"
    path.write_bytes(b"SSHL broken")
    store = HotlistStore(path)
    assert store.version is None
    assert path.read_bytes() == b"SSHL broken"  # kept for inspection
    store.install(encode_hotlist("v3", LISTED))
    assert HotlistStore(path).version == "v3"


def test_http_sync_uses_etags(tmp_path: Path, backoffice: BackOfficeServer) -> None:
    store = HotlistStore(tmp_path / "hotlist.bin")
    settings = HotlistSettings(source="http", http_url=backoffice.hotlist_url)
    sync = HttpHotlistSync(store, settings)
    with pytest.raises(HotlistFetchError, match="404"):
        sync.fetch_once()
    backoffice.set_hotlist(encode_hotlist("v1", LISTED[:10]), '"etag-1"')
    assert sync.fetch_once() is True
    assert store.version == "v1" and store.etag == '"etag-1"'
    assert sync.fetch_once() is False  # 304 Not Modified
    assert backoffice.hotlist_requests == 3
    backoffice.set_hotlist(b"not a hotlist", '"etag-bad"')
    with pytest.raises(HotlistFormatError):
        sync.fetch_once()
    assert store.version == "v1"
    backoffice.set_hotlist(encode_hotlist("v2", LISTED), '"etag-2"')
    assert sync.fetch_once() is True
    assert store.version == "v2" and store.is_listed(LISTED[99])
    # A restarted terminal sends the stored ETag and gets a 304.
    again = HttpHotlistSync(HotlistStore(tmp_path / "hotlist.bin"), settings)
    assert again.fetch_once() is False


def test_http_sync_worker_polls(tmp_path: Path, backoffice: BackOfficeServer) -> None:
    store = HotlistStore(tmp_path / "hotlist.bin")
    backoffice.set_hotlist(encode_hotlist("v1", LISTED), '"1"')
    settings = HotlistSettings(
        source="http", http_url=backoffice.hotlist_url, poll_interval_s=0.1, backoff=BackoffSettings(initial_s=0.05)
    )
    sync = HttpHotlistSync(store, settings)
    sync.start()
    try:
        assert wait_until(lambda: store.version == "v1", 10)
        backoffice.set_hotlist(encode_hotlist("v2", LISTED[:1]), '"2"')
        assert wait_until(lambda: store.version == "v2", 10)
        assert sync.is_alive()
    finally:
        sync.stop()
    assert not sync.is_alive()


def test_mqtt_sync_takes_the_retained_list(tmp_path: Path, broker: MosquittoBroker, password_file: Path) -> None:
    topic = f"hotlist/{TERMINAL}"
    auth: mqtt_publish.AuthParameter = {"username": BACKOFFICE_USER, "password": BACKOFFICE_PASSWORD}

    def publish(payload: bytes) -> None:
        mqtt_publish.single(
            topic, payload, qos=1, retain=True, hostname=broker.host, port=broker.port, auth=auth, protocol=mqtt.MQTTv5
        )

    publish(encode_hotlist("v1", LISTED[:20]))  # published before the terminal connects: retained
    store = HotlistStore(tmp_path / "hotlist.bin")
    broker_settings = MqttUplinkSettings(
        host=broker.host,
        port=broker.port,
        tls=None,
        username=TERMINAL,
        password_file=password_file,
        reconnect=BackoffSettings(initial_s=0.1, max_s=0.5),
    )
    sync = MqttHotlistSync(
        store, HotlistSettings(source="mqtt", mqtt_topic="hotlist/{terminal_id}"), broker_settings, terminal_id=TERMINAL
    )
    sync.start()
    try:
        assert wait_until(lambda: store.version == "v1", 10)
        assert store.is_listed(LISTED[0]) and not store.is_listed(LISTED[50])
        publish(b"corrupted update")
        assert wait_until(lambda: sync.stats().failures >= 1, 10)
        assert store.version == "v1"
        publish(encode_hotlist("v2", LISTED))
        assert wait_until(lambda: store.version == "v2", 10)
        assert store.is_listed(LISTED[50])
        assert sync.stats().connected and sync.is_alive()
    finally:
        sync.stop()
    assert HotlistStore(tmp_path / "hotlist.bin").version == "v2"
