"""MQTT drain against a bare paho publisher: same broker, same payloads, same in-flight window, one run.

What is compared, for each window W (BENCH_MQTT_WINDOWS, default 16,64,256):
- uplink: the real MqttUplink draining a TapQueue backlog of BENCH_MQTT_TAPS daemon-shaped
  records to depth zero (each row read from SQLite, published at QoS 1, deleted after its
  PUBACK), from `start()` until the last PUBACK's delete;
- bare paho, windowed: one paho client publishing the same record texts, keeping at most W
  unacknowledged (a new publish for each PUBACK), from CONNECT until the last PUBACK;
- bare paho, queued: the same, all messages handed to paho at once and paced by paho's own
  `max_inflight_messages_set(W)`.
The ratio is the uplink's rate over the faster of the two bare publishers. The variants run
interleaved, REPEATS times each, on one Mosquitto (no subscriber: the broker's PUBACK is what
lets a row leave the queue) whose Receive Maximum is raised above every window, so the uplink
is not capped below the bare publisher. Medians are reported; the machine's two cores are
shared by the broker, the publisher and anything else running.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.queue_throughput import BenchFailure, bulk_load
from bench.report import write
from reader.uplink.mqtt_uplink import MqttUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import MqttUplinkSettings, QueueSettings
from tests.support.mosquitto import MosquittoBroker

TAPS = int(os.environ.get("BENCH_MQTT_TAPS", "20000"))
WINDOWS = tuple(int(n) for n in os.environ.get("BENCH_MQTT_WINDOWS", "16,64,256").split(","))
REPEATS = int(os.environ.get("BENCH_MQTT_REPEATS", "3"))
TERMINAL = "BENCH-BUS-0001"
TOPIC = f"sscard/taps/{TERMINAL}"
TARGET_RATIO = 0.9
RUN_CAP_S = 120.0
# Above every window: Mosquitto advertises max_inflight_messages as its Receive Maximum.
BROKER_CONFIG = "max_inflight_messages 65535"


def _queue_settings(path: Path) -> QueueSettings:
    return QueueSettings(path=path, max_taps=2_000_000, max_bytes=4 * 1024**3, min_free_bytes=0)


def _bodies(path: Path) -> list[bytes]:
    """The record texts of the backlog, as the uplink would publish them."""
    with TapQueue(_queue_settings(path)) as queue:
        return [tap.body.encode("utf-8") for tap in queue.iter_taps()]


def uplink_run(backlog: Path, scratch: Path, broker: MosquittoBroker, window: int, run: int) -> float:
    """Seconds for the real uplink to drain a copy of the backlog to depth zero."""
    scratch.write_bytes(backlog.read_bytes())
    queue = TapQueue(_queue_settings(scratch))
    settings = MqttUplinkSettings(
        enabled=True,
        host=broker.host,
        port=broker.port,
        tls=None,
        inflight=window,
        client_id=f"bench-drain-{window}-{run}",
        session_expiry_s=0,
    )
    worker = MqttUplink(queue, settings, terminal_id=TERMINAL)
    try:
        # Wall clock at both ends: the end is the queue's own time of its last delete
        # (totals.last_delivery_at), so this thread can look rarely and not take the GIL from
        # the uplink's thread while it drains.
        started = time.time()
        worker.start()
        while worker.stats().delivered < TAPS:
            if time.time() - started > RUN_CAP_S:
                raise BenchFailure(f"uplink window {window}: {worker.stats().delivered} of {TAPS} in {RUN_CAP_S} s")
            if not worker.is_alive():
                raise BenchFailure(f"uplink died: {worker.stats().last_error}")
            time.sleep(0.1)
        finished = queue.status().last_delivery_at
        if finished is None:
            raise BenchFailure("the queue recorded no delivery")
        elapsed = finished - started
    finally:
        worker.stop()
        depth = queue.status().depth
        queue.close()
        scratch.unlink()
        for suffix in ("-wal", "-shm", "-clean"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    if depth != 0:
        raise BenchFailure(f"uplink window {window}: {depth} rows left after {TAPS} deliveries")
    return elapsed


def bare_run(bodies: list[bytes], broker: MosquittoBroker, window: int, run: int, *, paced_by_paho: bool) -> float:
    """Seconds for a bare paho client to get a PUBACK for every body, W unacknowledged at most."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{window}-{run}-{int(paced_by_paho)}", protocol=mqtt.MQTTv5
    )
    client.max_queued_messages_set(0)
    # Windowed: this loop keeps the window, paho's own is off (it scans the in-flight messages per PUBACK).
    client.max_inflight_messages_set(window if paced_by_paho else 0)
    acked = 0
    failed = 0
    connected = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if not reason.is_failure:
            connected.set()

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, reason: ReasonCode, _p: object) -> None:
        nonlocal acked, failed
        acked += 1
        if reason.is_failure:
            failed += 1

    client.on_connect = on_connect
    client.on_publish = on_publish
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    started = time.perf_counter()
    client.connect(broker.host, broker.port, keepalive=30, clean_start=True, properties=props)
    while not connected.is_set():
        if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
            raise BenchFailure("bare publisher lost its connection before CONNACK")
    sent = 0
    total = len(bodies)
    if paced_by_paho:
        for body in bodies:
            client.publish(TOPIC, body, qos=1)
        sent = total
    while acked < total:
        if not paced_by_paho:
            while sent < total and sent - acked < window:
                client.publish(TOPIC, bodies[sent], qos=1)
                sent += 1
        if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
            raise BenchFailure("bare publisher lost its connection")
        if time.perf_counter() - started > RUN_CAP_S:
            raise BenchFailure(f"bare publisher: {acked} of {total} PUBACKs in {RUN_CAP_S} s")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop(0.1)
    if failed:
        raise BenchFailure(f"bare publisher: {failed} PUBACKs with a failure code")
    return elapsed


def measure(workdir: Path) -> list[dict[str, Any]]:
    """Every window, every variant, REPEATS times interleaved; one row per window."""
    backlog = workdir / "backlog.sqlite3"
    bulk_load(backlog, TAPS)
    bodies = _bodies(backlog)
    if len(bodies) != TAPS:
        raise BenchFailure(f"backlog holds {len(bodies)} taps, wanted {TAPS}")
    rows: list[dict[str, Any]] = []
    broker = MosquittoBroker(workdir / "broker", extra_config=BROKER_CONFIG)
    broker.start()
    try:
        for window in WINDOWS:
            times: dict[str, list[float]] = {"uplink": [], "bare_windowed": [], "bare_queued": []}
            for run in range(REPEATS):
                times["bare_windowed"].append(bare_run(bodies, broker, window, run, paced_by_paho=False))
                times["uplink"].append(uplink_run(backlog, workdir / "drain.sqlite3", broker, window, run))
                times["bare_queued"].append(bare_run(bodies, broker, window, run, paced_by_paho=True))
            rates = {name: [TAPS / s for s in samples] for name, samples in times.items()}
            medians = {name: statistics.median(samples) for name, samples in rates.items()}
            bare = max(medians["bare_windowed"], medians["bare_queued"])
            ratio = medians["uplink"] / bare
            rows.append(
                {
                    "variant": f"window {window}",
                    "metric": "uplink drain rate / bare paho publisher rate",
                    "unit": "ratio",
                    "value": round(ratio, 3),
                    "uplink_taps_s": round(medians["uplink"]),
                    "bare_windowed_taps_s": round(medians["bare_windowed"]),
                    "bare_queued_taps_s": round(medians["bare_queued"]),
                    "uplink_runs": [round(r) for r in rates["uplink"]],
                    "bare_windowed_runs": [round(r) for r in rates["bare_windowed"]],
                    "bare_queued_runs": [round(r) for r in rates["bare_queued"]],
                    "target": f">= {TARGET_RATIO:g}",
                    "meets": ratio >= TARGET_RATIO,
                }
            )
    finally:
        broker.close()
    return rows


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="sscard-bench-mqtt-", dir=os.environ.get("BENCH_TMP")) as tmp:
        rows = measure(Path(tmp))
    write(
        "mqtt_drain",
        rows,
        notes=(
            f"{TAPS:,} daemon-shaped records per run, QoS 1, one Mosquitto on loopback with Receive Maximum "
            f"65535, no subscriber; {REPEATS} interleaved runs per variant, medians; ratio = uplink / the faster "
            "bare publisher (windowed: one publish per PUBACK; queued: all handed to paho, paced by its "
            "max_inflight_messages). Uplink time runs from start() to the last delete, bare from CONNECT to the "
            "last PUBACK."
        ),
    )


if __name__ == "__main__":
    run()
