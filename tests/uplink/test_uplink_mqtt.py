"""The MQTT uplink against a real Mosquitto: volume, a broker restart, ACL refusals, mutual TLS."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.uplink.mqtt_uplink import MqttUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import BackoffSettings, MqttUplinkSettings, TlsSettings
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_sink import TapSink
from tests.support.pki import Pki
from tests.support.taps import tap_record
from tests.support.waiting import wait_until
from tests.uplink.conftest import BACKOFFICE_PASSWORD, BACKOFFICE_USER, TERMINAL

RECONNECT = BackoffSettings(initial_s=0.1, max_s=0.5)


def settings_for(broker: MosquittoBroker, password: Path, **overrides: object) -> MqttUplinkSettings:
    values: dict[str, object] = {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "tls": None,
        "username": TERMINAL,
        "password_file": password,
        "topic": "taps/{terminal_id}",
        "inflight": 20,
        "reconnect": RECONNECT,
        "connect_timeout_s": 2.0,
        "idle_poll_s": 0.1,
    }
    values.update(overrides)
    return MqttUplinkSettings.model_validate(values)


@pytest.fixture
def sink(broker: MosquittoBroker) -> Iterator[TapSink]:
    consumer = TapSink(broker.host, broker.port, username=BACKOFFICE_USER, password=BACKOFFICE_PASSWORD)
    consumer.start()
    yield consumer
    consumer.stop()


@pytest.fixture
def uplinks() -> Iterator[list[MqttUplink]]:
    started: list[MqttUplink] = []
    yield started
    for uplink in started:
        uplink.stop()


def run(uplinks: list[MqttUplink], queue: TapQueue, settings: MqttUplinkSettings) -> MqttUplink:
    uplink = MqttUplink(queue, settings, terminal_id=TERMINAL)
    uplink.start()
    uplinks.append(uplink)
    return uplink


def enqueue_all(queue: TapQueue, count: int, terminal_id: str = TERMINAL, start: int = 0) -> set[tuple[str, str]]:
    keys = set()
    for n in range(start, start + count):
        record = tap_record(n, terminal_id=terminal_id)
        queue.enqueue(record)
        keys.add((terminal_id, record["tap_id"]))
    return keys


def test_ten_thousand_taps_delivered(
    queue: TapQueue, broker: MosquittoBroker, sink: TapSink, password_file: Path, uplinks: list[MqttUplink]
) -> None:
    expected = enqueue_all(queue, 10_000)
    uplink = run(uplinks, queue, settings_for(broker, password_file))
    assert sink.wait_for(10_000, 60), f"{len(sink.taps)} of 10000 arrived"
    assert wait_until(lambda: queue.status().depth == 0, 10)
    assert set(sink.taps) == expected
    stats = uplink.stats()
    assert stats.delivered == 10_000
    assert stats.set_aside == 0
    assert stats.connected and uplink.is_alive()
    assert queue.status().delivered_total == 10_000


def test_broker_restart_mid_stream_loses_nothing(
    queue: TapQueue, broker: MosquittoBroker, sink: TapSink, password_file: Path, uplinks: list[MqttUplink]
) -> None:
    total = 10_000
    expected: set[tuple[str, str]] = set()
    halt = threading.Event()

    def produce() -> None:
        for n in range(total):
            if halt.is_set():
                return
            record = tap_record(n)
            queue.enqueue(record)
            expected.add((TERMINAL, record["tap_id"]))

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        uplink = run(uplinks, queue, settings_for(broker, password_file))
        assert wait_until(lambda: len(sink.taps) >= 2_000, 30)
        broker.stop()
        # Taps keep coming while the broker is away; they wait in the queue.
        assert wait_until(lambda: uplink.stats().connected is False, 10)
        delivered_while_down = uplink.stats().delivered
        assert wait_until(lambda: uplink.stats().failures >= 3, 10)  # reconnect attempts refused
        assert uplink.stats().delivered == delivered_while_down
        assert queue.status().depth > 0
        broker.start()
        producer.join(60)
        assert not producer.is_alive()
        assert sink.wait_for(total, 60), f"{len(sink.taps)} of {total} arrived"
        assert wait_until(lambda: queue.status().depth == 0, 10)
        assert set(sink.taps) == expected
        assert uplink.stats().delivered == total
        assert queue.status().delivered_total == total
    finally:
        halt.set()
        producer.join(10)


def test_acl_refusal_is_not_a_delivery(
    queue: TapQueue, broker: MosquittoBroker, sink: TapSink, password_file: Path, uplinks: list[MqttUplink]
) -> None:
    allowed = enqueue_all(queue, 30)
    refused = enqueue_all(queue, 5, terminal_id="VAL-999999", start=100)  # taps/VAL-999999: ACL says no
    allowed |= enqueue_all(queue, 30, start=200)
    uplink = run(uplinks, queue, settings_for(broker, password_file))
    assert sink.wait_for(len(allowed), 20)
    assert wait_until(lambda: queue.status().depth == 0, 10)
    stats = uplink.stats()
    assert stats.delivered == len(allowed)
    assert stats.set_aside == len(refused)
    assert set(sink.taps) == allowed
    poisoned = list(queue.iter_poison())
    assert {(p.tap.terminal_id, p.tap.tap_id) for p in poisoned} == refused
    assert all(p.reason.startswith("puback 0x87") for p in poisoned)
    status = queue.status()
    assert status.delivered_total == len(allowed) and status.poison == len(refused)


def test_mutual_tls_listener(
    queue: TapQueue, broker: MosquittoBroker, sink: TapSink, pki: Pki, password_file: Path, uplinks: list[MqttUplink]
) -> None:
    cert, key = pki.client(TERMINAL)
    tls = TlsSettings(ca_file=pki.ca_cert, client_cert_file=cert, client_key_file=key)
    expected = enqueue_all(queue, 200)
    settings = settings_for(
        broker, password_file, host="localhost", port=broker.tls_port, tls=tls, username=None, password_file=None
    )
    run(uplinks, queue, settings)
    assert sink.wait_for(200, 20)
    assert set(sink.taps) == expected


def test_tls_without_client_certificate_is_refused(
    queue: TapQueue, broker: MosquittoBroker, pki: Pki, password_file: Path, uplinks: list[MqttUplink]
) -> None:
    enqueue_all(queue, 10)
    settings = settings_for(
        broker,
        password_file,
        host="localhost",
        port=broker.tls_port,
        tls=TlsSettings(ca_file=pki.ca_cert),
        username=None,
        password_file=None,
    )
    uplink = run(uplinks, queue, settings)
    assert wait_until(lambda: uplink.stats().failures >= 3, 10)
    uplink.stop()
    stats = uplink.stats()
    assert stats.delivered == 0 and not stats.connected
    assert queue.status().depth == 10


def test_wrong_password_is_a_connect_failure(
    queue: TapQueue, broker: MosquittoBroker, tmp_path: Path, uplinks: list[MqttUplink]
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    enqueue_all(queue, 3)
    uplink = run(uplinks, queue, settings_for(broker, wrong))
    assert wait_until(lambda: uplink.stats().failures >= 2, 10)
    # Mosquitto 2.0 answers a bad password with 0x87 Not authorized (0x86 in other brokers).
    assert re.search(r"CONNACK 0x8[67]", uplink.stats().last_error or "")
    assert queue.status().depth == 3
