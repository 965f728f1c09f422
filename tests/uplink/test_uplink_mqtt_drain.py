"""The MQTT drain's read and delete path: cursor reads, batched deletes, rows put back below the
cursor, and jittered reconnects, against a real Mosquitto where a network is involved."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.uplink.mqtt_uplink import MqttUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import BackoffSettings, MqttUplinkSettings, QueueSettings
from tests.support.mosquitto import MosquittoBroker, free_port
from tests.support.mqtt_sink import TapSink
from tests.support.taps import tap_record
from tests.support.waiting import wait_until
from tests.uplink.conftest import BACKOFFICE_PASSWORD, BACKOFFICE_USER, TERMINAL, TERMINAL_PASSWORD
from tests.uplink.test_uplink_mqtt import enqueue_all, settings_for


@pytest.fixture
def sink(broker: MosquittoBroker) -> Iterator[TapSink]:
    consumer = TapSink(broker.host, broker.port, username=BACKOFFICE_USER, password=BACKOFFICE_PASSWORD)
    consumer.start()
    yield consumer
    consumer.stop()


# --------------------------------------------------------------------------- queue reads and deletes


def test_batch_after_reads_only_rows_past_the_cursor(queue: TapQueue) -> None:
    seqs = [queue.enqueue(tap_record(n)) for n in range(10)]
    assert [t.seq for t in queue.batch_after(0, 4)] == seqs[:4]
    assert [t.seq for t in queue.batch_after(seqs[3], 4)] == seqs[4:8]
    assert [t.seq for t in queue.batch_after(seqs[7], 100)] == seqs[8:]
    assert queue.batch_after(seqs[-1], 100) == []
    assert queue.batch_after(0, 0) == []
    first = queue.batch_after(0, 1)[0]
    assert first.tap_id == tap_record(0)["tap_id"] and first.record() == queue.batch(1)[0].record()


def test_ack_deletes_each_queued_row_once_and_counts_it(queue: TapQueue) -> None:
    seqs = [queue.enqueue(tap_record(n)) for n in range(10)]
    assert queue.ack([seqs[1], seqs[3], seqs[3], 999_999]) == 2
    assert queue.ack([]) == 0
    status = queue.status()
    assert status.depth == 8 and status.delivered_total == 2
    assert status.bytes == sum(t.size for t in queue.iter_taps())
    assert [t.seq for t in queue.iter_taps()] == [s for s in seqs if s not in (seqs[1], seqs[3])]


# --------------------------------------------------------------------------- the uplink


def test_rows_put_back_below_the_cursor_are_sent(
    queue: TapQueue, broker: MosquittoBroker, sink: TapSink, password_file: Path
) -> None:
    """Rows an operator retries from the poison table go back at their old (low) sequence
    numbers, below the cursor of an uplink that has moved on: they must be published again on
    the same connection (here the ACL refuses them again, so they come back to the poison table)."""
    refused = enqueue_all(queue, 3, terminal_id="VAL-999999")  # taps/VAL-999999: the ACL refuses it
    allowed = enqueue_all(queue, 200)
    uplink = MqttUplink(queue, settings_for(broker, password_file, inflight=4), terminal_id=TERMINAL)
    uplink.start()
    try:
        assert sink.wait_for(len(allowed), 30)
        assert wait_until(lambda: queue.status().poison == 3, 10)
        more = enqueue_all(queue, 50, start=1000)
        assert sink.wait_for(len(allowed | more), 30)
        assert queue.retry_poison() == 3
        assert wait_until(lambda: uplink.stats().set_aside == 6, 10), uplink.stats()
        assert wait_until(lambda: queue.status().depth == 0, 10)
        assert {(p.tap.terminal_id, p.tap.tap_id) for p in queue.iter_poison()} == refused
        assert set(sink.taps) == allowed | more
        assert uplink.stats().connected and uplink.stats().failures == 6
    finally:
        uplink.stop()


def test_each_row_is_published_once_per_connection(
    queue: TapQueue, broker: MosquittoBroker, sink: TapSink, password_file: Path
) -> None:
    expected = enqueue_all(queue, 3000)
    uplink = MqttUplink(queue, settings_for(broker, password_file, inflight=256), terminal_id=TERMINAL)
    uplink.start()
    try:
        assert sink.wait_for(3000, 60)
        assert wait_until(lambda: queue.status().depth == 0, 10)
        assert set(sink.taps) == expected
        assert sink.duplicates == 0 and uplink.stats().failures == 0
        assert uplink.stats().delivered == 3000 and queue.status().delivered_total == 3000
    finally:
        uplink.stop()


def test_reconnect_delays_are_jittered_per_client(tmp_path: Path) -> None:
    """Ten terminals losing one broker together must not come back in step: each first delay lies in
    the equal-jitter range [initial/2, initial] of its own backoff, and the delays differ."""
    port = free_port()  # nobody listens: every connect is refused
    initial = 0.4
    settings = MqttUplinkSettings(
        enabled=True,
        host="127.0.0.1",
        port=port,
        tls=None,
        username=TERMINAL,
        password_file=_password(tmp_path),
        reconnect=BackoffSettings(initial_s=initial, max_s=initial),
        connect_timeout_s=1.0,
    )
    queues = [TapQueue(_queue_settings(tmp_path, n)) for n in range(10)]
    uplinks = [MqttUplink(q, settings, terminal_id=f"VAL-{n:06d}", name=f"uplink-{n}") for n, q in enumerate(queues)]
    delays: dict[str, float] = {}

    def first_delays_seen() -> bool:
        for uplink in uplinks:
            stats = uplink.stats()
            # While it waits, retry_at - last_error_at is the delay its backoff chose.
            if uplink.name not in delays and stats.retry_at is not None and stats.last_error_at is not None:
                delays[uplink.name] = stats.retry_at - stats.last_error_at
        return len(delays) == len(uplinks)

    try:
        for uplink in uplinks:
            uplink.start()
        assert wait_until(first_delays_seen, 10, interval=0.01)
        values = list(delays.values())
        assert all(initial / 2 - 0.01 <= d <= initial + 0.01 for d in values), values
        assert len({round(d, 3) for d in values}) >= 8, values
        assert statistics.pstdev(values) > 0.02, values
    finally:
        for uplink in uplinks:
            uplink.stop()
        for q in queues:
            q.close()


def _password(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(TERMINAL_PASSWORD + "\n")
    path.chmod(0o600)
    return path


def _queue_settings(tmp_path: Path, n: int) -> QueueSettings:
    return QueueSettings(path=tmp_path / f"q{n}.sqlite3", min_free_bytes=0)
