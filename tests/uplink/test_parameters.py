"""Operator parameter bundles: signed, versioned, kept across restarts, delivered by HTTP and MQTT.

Delivery runs through a real HTTP server (tests/support/backoffice.py, its ETag-serving
document endpoint) and a real Mosquitto; every refusal is checked to leave the bundle in
force in place, on disk and after a restart.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import paho.mqtt.publish as mqtt_publish
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reader.daemon.fares import FareCard, fare_for_tap
from reader.log import configure_logging
from reader.uplink.hotlist import public_key
from reader.uplink.parameters import (
    HttpParameterSync,
    MqttParameterSync,
    ParameterFetchError,
    ParameterFormatError,
    ParameterSettings,
    ParameterSignatureError,
    ParameterStorageError,
    ParameterStore,
    ParameterVersionError,
    decision_versions,
    encode_bundle,
    sign_payload,
)
from reader.uplink.settings import BackoffSettings, HotlistSettings, MqttUplinkSettings
from tests.support.backoffice import BackOfficeServer
from tests.support.mosquitto import MosquittoBroker
from tests.support.waiting import wait_until
from tests.uplink.conftest import BACKOFFICE_PASSWORD, BACKOFFICE_USER, TERMINAL, TERMINAL_PASSWORD

# RFC 8032 section 7.1, TEST 1: the back office's key in these tests (as in the hotlist tests).
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
BACK_OFFICE = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
INTRUDER = Ed25519PrivateKey.generate()
KEY = public_key(RFC8032_PUBLIC)
LINE = "812"
LINE_CODE = bytes.fromhex("0812")


def bundle(version: int, base: int = 200, **extra: Any) -> dict[str, Any]:
    """A bundle as the back office writes it: the base fare tells versions apart in the rules."""
    return {
        "version": version,
        "issued": "2026-12-04T21:00:00+08:00",
        "whitelist": {"home_cities": ["2900"], "cities": ["1000"]},
        "fares": {
            "base": base,
            "time_bands": [{"name": "peak", "start": "07:00", "end": "09:00"}],
            "by_band": {"peak": base + 50},
        },
        **extra,
    }


def signed(version: int, base: int = 200, key: Ed25519PrivateKey = BACK_OFFICE, **extra: Any) -> bytes:
    return encode_bundle(bundle(version, base, **extra), key)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    restore = configure_logging("info", stream=buffer)
    yield buffer
    restore()


def events(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "parameters.json"


# --------------------------------------------------------------------------- the store


def test_a_bundle_is_put_in_force_with_its_rules(path: Path) -> None:
    store = ParameterStore(path, KEY, line=LINE)
    assert store.current() is None and decision_versions(store.current(), None) == {"parameters": None, "hotlist": None}
    installed = store.receive(signed(12))
    current = store.current()
    assert current is installed and current.version == 12
    assert current.issuers is not None
    assert current.issuers.home_cities == frozenset({"2900"}) and current.issuers.cities == frozenset({"1000"})
    assert current.fares.line_code == bytes.fromhex("0812")
    assert current.issued.utcoffset() is not None and current.issued.hour == 21
    fare = fare_for_tap(FareCard(None, None), dt.datetime(2026, 12, 4, 7, 30), current.fares.table, LINE_CODE)
    assert (fare.time_band, fare.amount) == ("peak", 250)
    assert decision_versions(current, 345) == {"parameters": 12, "hotlist": 345}


def test_refused_bundles_leave_the_bundle_in_force(path: Path, logs: io.StringIO) -> None:
    store = ParameterStore(path, KEY, line=LINE)
    store.receive(signed(5))
    on_disk = path.read_bytes()

    envelope = json.loads(signed(6))
    tampered_payload = json.dumps(bundle(6, base=1)).encode()
    tampered = json.dumps({**envelope, "payload": base64.b64encode(tampered_payload).decode()}).encode()
    overlapping = bundle(
        7,
        fares={
            "base": 200,
            "time_bands": [
                {"name": "a", "start": "07:00", "end": "09:00"},
                {"name": "b", "start": "08:00", "end": "10:00"},
            ],
            "by_band": {"a": 1, "b": 2},
        },
    )
    no_code_for_this_line = bundle(8, fares={"base": 200, "line_code": {"encoding": "table", "table": {"101": "0101"}}})
    refusals: list[tuple[bytes, type[Exception], str]] = [
        (signed(6, key=INTRUDER), ParameterSignatureError, "bad_signature"),
        (tampered, ParameterSignatureError, "bad_signature"),
        (b"{not json", ParameterFormatError, "malformed"),
        (b"", ParameterFormatError, "malformed"),
        (json.dumps({**envelope, "format": "sscard-parameters/2"}).encode(), ParameterFormatError, "malformed"),
        (json.dumps({**envelope, "signature": "***"}).encode(), ParameterFormatError, "malformed"),
        (sign_payload(b"{not json", BACK_OFFICE), ParameterFormatError, "malformed"),
        (sign_payload(b"[]", BACK_OFFICE), ParameterFormatError, "malformed"),
        (encode_bundle(overlapping, BACK_OFFICE), ParameterFormatError, "malformed"),
        (encode_bundle(no_code_for_this_line, BACK_OFFICE), ParameterFormatError, "malformed"),
        (encode_bundle({**bundle(9), "issued": "2026-12-04T21:00:00"}, BACK_OFFICE), ParameterFormatError, "malformed"),
        (encode_bundle({**bundle(9), "extra": 1}, BACK_OFFICE), ParameterFormatError, "malformed"),
        (encode_bundle({**bundle(9), "version": "9"}, BACK_OFFICE), ParameterFormatError, "malformed"),
        (signed(4), ParameterVersionError, "not_newer"),  # older
        (signed(5, base=300), ParameterVersionError, "not_newer"),  # same version, other content
    ]
    for document, error, kind in refusals:
        with pytest.raises(error) as caught:
            store.receive(document)
        assert getattr(caught.value, "kind", None) == kind
        current = store.current()
        assert current is not None and current.version == 5 and current.fares.table.base == 200
    assert path.read_bytes() == on_disk
    refused = [e for e in events(logs) if e["event"] == "parameters_refused"]
    assert [e["error_kind"] for e in refused] == [kind for _, _, kind in refusals]
    assert all(e["version"] == 5 and e["level"] == "warning" for e in refused)

    with pytest.raises(ParameterVersionError) as older:
        store.receive(signed(4))
    assert older.value.stale
    with pytest.raises(ParameterVersionError) as same:
        store.receive(signed(5, base=300))
    assert not same.value.stale
    assert store.receive(signed(5)) is store.current()  # the bundle in force, delivered again

    restarted = ParameterStore(path, KEY, line=LINE)
    current = restarted.current()
    assert current is not None and current.version == 5 and current.fares.table.base == 200
    assert restarted.receive(signed(6)).version == 6
    assert ParameterStore(path, KEY, line=LINE).version == 6


def test_a_bundle_altered_on_disk_is_not_trusted_at_start(path: Path, logs: io.StringIO) -> None:
    ParameterStore(path, KEY, line=LINE).receive(signed(3))
    envelope = json.loads(path.read_bytes())
    payload = base64.b64decode(envelope["payload"]).replace(b'"base":200', b'"base":20')
    path.write_text(json.dumps({**envelope, "payload": base64.b64encode(payload).decode()}))
    store = ParameterStore(path, KEY, line=LINE)
    assert store.current() is None
    assert [e["error_kind"] for e in events(logs) if e["event"] == "parameters_on_disk_unusable"] == ["bad_signature"]
    assert store.receive(signed(3)).version == 3  # the next delivery replaces the bad file


def test_a_bundle_that_cannot_be_kept_is_not_put_in_force(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = ParameterStore(blocker / "parameters.json", KEY, line=LINE)
    with pytest.raises(ParameterStorageError):
        store.receive(signed(1))
    assert store.current() is None


def test_a_tap_sees_one_bundle_whole_while_bundles_are_swapped(path: Path) -> None:
    store = ParameterStore(path, KEY, line=LINE)
    documents = [signed(v, base=v * 10) for v in range(1, 41)]
    seen: list[tuple[int, int, int]] = []
    done = threading.Event()

    def tap() -> None:
        while not done.is_set():
            snapshot = store.current()
            if snapshot is not None:
                seen.append((snapshot.version, snapshot.fares.table.base, snapshot.fares.table.time_bands[0].fare))

    reader = threading.Thread(target=tap)
    reader.start()
    try:
        for document in documents:
            store.receive(document)
    finally:
        done.set()
        reader.join(10)
    assert seen and all(base == v * 10 and band == v * 10 + 50 for v, base, band in seen)
    versions = [v for v, _, _ in seen]
    assert versions == sorted(versions)  # never back to an older bundle


def test_the_key_is_the_hotlist_s_unless_given() -> None:
    hotlist = HotlistSettings(public_key=RFC8032_PUBLIC.hex())
    assert ParameterSettings().key_bytes(hotlist) == RFC8032_PUBLIC
    own = base64.b64encode(RFC8032_PUBLIC).decode()
    assert ParameterSettings(public_key=own).key_bytes(None) == RFC8032_PUBLIC
    with pytest.raises(ValueError, match="need a public key"):
        ParameterSettings().key_bytes(HotlistSettings())
    with pytest.raises(ValueError, match="32-byte Ed25519 key"):
        ParameterSettings(public_key="00" * 31).key_bytes(None)


# --------------------------------------------------------------------------- HTTP


def _http(url: str, **extra: Any) -> ParameterSettings:
    return ParameterSettings.model_validate({"source": "http", "http_url": url, **extra})


def test_http_delivery_with_etag(path: Path, backoffice: BackOfficeServer) -> None:
    store = ParameterStore(path, KEY, line=LINE)
    sync = HttpParameterSync(store, _http(backoffice.hotlist_url))
    with pytest.raises(ParameterFetchError, match="404"):
        sync.fetch_once()
    backoffice.set_hotlist(signed(1), '"p-1"')
    assert sync.fetch_once() is True
    assert store.version == 1 and store.etag == '"p-1"'
    # The server answers by entity tag: under the ETag we hold, even another body is a 304.
    backoffice.set_hotlist(signed(2), '"p-1"')
    requests = backoffice.hotlist_requests
    assert sync.fetch_once() is False and store.version == 1
    assert backoffice.hotlist_requests == requests + 1

    backoffice.set_hotlist(signed(2, key=INTRUDER), '"p-bad"')
    with pytest.raises(ParameterSignatureError):
        sync.fetch_once()
    backoffice.set_hotlist(b"<html>captive portal</html>", '"p-junk"')
    with pytest.raises(ParameterFormatError):
        sync.fetch_once()
    backoffice.set_hotlist(signed(2, base=300), '"p-2"')
    assert sync.fetch_once() is True and store.version == 2
    backoffice.set_hotlist(signed(1), '"p-old"')
    assert sync.fetch_once() is False  # an older bundle: ignored, not a fault
    assert store.version == 2 and store.etag == '"p-2"'

    backoffice.set_hotlist(signed(3), '"p-2"')
    restarted = ParameterStore(path, KEY, line=LINE)
    again = HttpParameterSync(restarted, _http(backoffice.hotlist_url))
    assert again.fetch_once() is False and restarted.version == 2  # restarted: the kept ETag gets a 304
    assert sorted(p.name for p in path.parent.iterdir()) == ["parameters.json", "parameters.json.etag"]


def test_http_refuses_a_bundle_beyond_max_bytes(path: Path, backoffice: BackOfficeServer) -> None:
    store = ParameterStore(path, KEY, line=LINE)
    backoffice.set_hotlist(signed(1), '"p-1"')
    with pytest.raises(ParameterFetchError, match="larger than"):
        HttpParameterSync(store, _http(backoffice.hotlist_url, max_bytes=64)).fetch_once()
    assert store.version is None and not path.exists()


def test_http_worker_polls(path: Path, backoffice: BackOfficeServer) -> None:
    store = ParameterStore(path, KEY, line=LINE)
    backoffice.set_hotlist(signed(1), '"p-1"')
    sync = HttpParameterSync(
        store, _http(backoffice.hotlist_url, poll_interval_s=0.1, backoff=BackoffSettings(initial_s=0.05))
    )
    sync.start()
    try:
        assert wait_until(lambda: store.version == 1, 10)
        backoffice.set_hotlist(signed(2, key=INTRUDER), '"p-bad"')
        assert wait_until(lambda: sync.stats().failures >= 1, 10)
        assert "bad_signature" in (sync.stats().last_error or "") and store.version == 1
        backoffice.set_hotlist(signed(3), '"p-3"')
        assert wait_until(lambda: store.version == 3, 10)
        assert sync.is_alive()
    finally:
        sync.stop()
    assert not sync.is_alive()


# --------------------------------------------------------------------------- MQTT

PARAMETER_ACL = f"""
user {TERMINAL}
topic read parameters/#

user {BACKOFFICE_USER}
topic write parameters/#
"""


@pytest.fixture
def parameter_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    server = MosquittoBroker(
        tmp_path / "broker",
        users={TERMINAL: TERMINAL_PASSWORD, BACKOFFICE_USER: BACKOFFICE_PASSWORD},
        acl=PARAMETER_ACL,
    )
    server.start()
    yield server
    server.close()


def test_mqtt_delivery_by_retained_message(path: Path, parameter_broker: MosquittoBroker, password_file: Path) -> None:
    topic = f"parameters/{TERMINAL}"

    def publish(payload: bytes) -> None:
        mqtt_publish.single(
            topic,
            payload,
            qos=1,
            retain=True,
            hostname=parameter_broker.host,
            port=parameter_broker.port,
            auth={"username": BACKOFFICE_USER, "password": BACKOFFICE_PASSWORD},
            protocol=mqtt.MQTTv5,
        )

    publish(signed(1))  # before the terminal connects: retained
    store = ParameterStore(path, KEY, line=LINE)
    broker_settings = MqttUplinkSettings(
        host=parameter_broker.host,
        port=parameter_broker.port,
        tls=None,
        username=TERMINAL,
        password_file=password_file,
        reconnect=BackoffSettings(initial_s=0.1, max_s=0.5),
    )
    settings = ParameterSettings(source="mqtt", mqtt_topic="parameters/{terminal_id}")

    def started() -> MqttParameterSync:
        sync = MqttParameterSync(store, settings, broker_settings, terminal_id=TERMINAL)
        sync.start()
        assert wait_until(lambda: sync.stats().connected is True, 10)
        return sync

    sync = started()
    try:
        assert wait_until(lambda: store.version == 1, 10)
        publish(signed(2, key=INTRUDER))
        assert wait_until(lambda: sync.stats().failures >= 1, 10)
        publish(b"{not json")
        assert wait_until(lambda: sync.stats().failures >= 2, 10)
        assert store.version == 1
        publish(signed(3, base=300))
        assert wait_until(lambda: store.version == 3, 10)
        current = store.current()
        assert current is not None and current.fares.table.base == 300
        assert sync.is_alive()
    finally:
        sync.stop()

    # Restarted from disk: the retained bundle is the one in force (no fault), an older one is ignored.
    store = ParameterStore(path, KEY, line=LINE)
    assert store.version == 3
    sync = started()
    try:
        publish(signed(2))
        publish(signed(4))
        assert wait_until(lambda: store.version == 4, 10)
        assert sync.stats().failures == 0
    finally:
        sync.stop()
    assert ParameterStore(path, KEY, line=LINE).version == 4
