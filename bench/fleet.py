"""A fleet on one broker: BENCH_FLEET_TERMINALS terminals' uplinks and hotlist syncs against one Mosquitto.

Each terminal is the real MqttUplink (its own client id, a persistent session, its own
TapQueue holding a small backlog) and the real MqttHotlistSync (its own client id, the
retained hotlist topic). A back-office consumer (tests/support/mqtt_sink.py, persistent
session) counts taps by (terminal id, tap id). The timeline:

1. every terminal starts with BACKLOG taps queued, and queues one more every TRICKLE_S;
2. once a third of the backlog has reached the consumer, the broker is stopped (SIGTERM: it
   saves its sessions), kept down DOWN_S, and started again;
3. measured: from the broker listening again until every uplink and every hotlist sync has
   a new session (each terminal's own reconnect time, from its own backoff);
4. the producers stop; once every queue is empty: taps delivered, lost (queued but never
   received: must be 0) and duplicated (received more than once);
5. the back office publishes a new signed hotlist, retained; measured: until all terminals
   have it in force.

paho drives its sockets with select(), which takes no descriptor numbered 1024 or more
(FD_SETSIZE); a terminal here holds about a dozen descriptors (two MQTT sockets, paho's two
wake-up socket pairs, two SQLite connections with their WAL and shared-memory files, the
hotlist file), so the terminals run in child processes of TERMINALS_PER_PROCESS each. The
queue files are in /dev/shm when it is there (a thousand files' fsyncs would measure the
disk, not the broker); each uplink still commits every enqueue at synchronous=FULL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.report import percentiles, write

TERMINALS = int(os.environ.get("BENCH_FLEET_TERMINALS", "1000"))
TERMINALS_PER_PROCESS = int(os.environ.get("BENCH_FLEET_PER_PROCESS", "50"))
BACKLOG = int(os.environ.get("BENCH_FLEET_BACKLOG", "20"))
TRICKLE_S = 2.0
DOWN_S = 2.0
HOTLIST_TOPIC = "sscard/hotlist"
TAP_TOPIC = "sscard/taps/{terminal_id}"
PHASE_CAP_S = 300.0
BROKER_CONFIG = "max_connections -1"


def terminal_id(n: int) -> str:
    """The id of terminal n; its client ids are sscard-<id> and sscard-<id>-hotlist."""
    return f"FLEET-{n:05d}"


# ----------------------------------------------------------------------------- the child


def child_main(first: int, count: int, port: int, public_key_hex: str, workdir: Path) -> None:
    """Run terminals first..first+count-1 until told to stop on stdin; report on stdout."""
    from reader.log import configure_logging
    from reader.uplink.hotlist import HotlistStore
    from reader.uplink.hotlist_sync import MqttHotlistSync
    from reader.uplink.mqtt_uplink import MqttUplink
    from reader.uplink.queue import TapQueue
    from reader.uplink.settings import HotlistSettings, MqttUplinkSettings, QueueSettings
    from tests.support.taps import tap_record

    configure_logging("error")
    lock = threading.Lock()
    connects: dict[str, list[float]] = {}
    hotlist_at: dict[str, dict[str, float]] = {}

    class Uplink(MqttUplink):
        """The real uplink; only notes when each session opens."""

        def _connect(self) -> bool:
            ok = super()._connect()
            if ok:
                with lock:
                    connects.setdefault(self.name, []).append(time.monotonic())
            return ok

    class Hotlist(MqttHotlistSync):
        """The real hotlist sync; only notes when a session opens and when a version comes in force."""

        def _connect(self) -> None:
            super()._connect()
            if self._session is not None:
                with lock:
                    connects.setdefault(self.name, []).append(time.monotonic())

        def _on_message(self, client: Any, userdata: object, message: Any) -> None:
            super()._on_message(client, userdata, message)
            version = self._store.version
            if version is not None:
                with lock:
                    hotlist_at.setdefault(self.name, {}).setdefault(version, time.monotonic())

    queues: list[TapQueue] = []
    workers: list[Any] = []
    enqueued: dict[str, int] = {}
    for n in range(first, first + count):
        tid = terminal_id(n)
        folder = workdir / tid
        folder.mkdir(parents=True)
        queue = TapQueue(QueueSettings(path=folder / "queue.sqlite3", min_free_bytes=0))
        for i in range(BACKLOG):
            queue.enqueue(tap_record(i, terminal_id=tid))
        enqueued[tid] = BACKLOG
        queues.append(queue)
        broker = MqttUplinkSettings(enabled=True, host="127.0.0.1", port=port, tls=None, topic=TAP_TOPIC)
        workers.append(Uplink(queue, broker, terminal_id=tid, name=f"uplink-{tid}"))
        hotlist = HotlistSettings(
            path=folder / "hotlist.bin", source="mqtt", mqtt_topic=HOTLIST_TOPIC, public_key=public_key_hex
        )
        workers.append(Hotlist(HotlistStore(hotlist.path), hotlist, broker, terminal_id=tid, name=f"hotlist-{tid}"))
    for worker in workers:
        worker.start()

    producing = threading.Event()
    producing.set()

    def produce() -> None:
        while producing.is_set():
            for queue in queues:
                if not producing.is_set():
                    return
                tid = terminal_id(first + queues.index(queue))
                queue.enqueue(tap_record(enqueued[tid], terminal_id=tid))
                enqueued[tid] += 1
                time.sleep(TRICKLE_S / len(queues))

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()

    def report(kind: str, **fields: Any) -> None:
        with lock:
            line = json.dumps({"kind": kind, **fields})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    stop_status = threading.Event()

    def status() -> None:
        while not stop_status.wait(0.2):
            with lock:
                up = sum(1 for w in workers if w.stats().connected)
                versions = [max(v, key=v.get) if v else None for v in (hotlist_at.get(w.name, {}) for w in workers)]
            depth = sum(q.status().depth for q in queues)
            report("status", connected=up, depth=depth, versions=[v for v in versions if v is not None])

    threading.Thread(target=status, daemon=True).start()
    for line in sys.stdin:
        command = line.strip()
        if command == "stop_producing":
            producing.clear()
            producer.join()
            report("enqueued", enqueued=enqueued)
        elif command == "exit":
            break
    producing.clear()
    stop_status.set()
    for worker in workers:
        worker.stop()
    failures = {w.name: w.stats().failures for w in workers}
    for queue in queues:
        queue.close()
    report("final", connects=connects, hotlist_at=hotlist_at, failures=failures, enqueued=enqueued)


# ----------------------------------------------------------------------------- the parent


class Child:
    """One process of terminals and the last figures it reported."""

    def __init__(self, first: int, count: int, port: int, public_key_hex: str, workdir: Path) -> None:
        self.first = first
        self.count = count
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.fleet",
                "child",
                str(first),
                str(count),
                str(port),
                public_key_hex,
                str(workdir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.status: dict[str, Any] = {}
        self.enqueued: dict[str, int] | None = None
        self.final: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: TextIO | None) -> None:
        assert stream is not None
        for line in stream:
            message = json.loads(line)
            if message["kind"] == "status":
                self.status = message
            elif message["kind"] == "enqueued":
                self.enqueued = message["enqueued"]
            elif message["kind"] == "final":
                self.final = message

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120.0) -> None:
        """Wait for the child to end, once it has been sent "exit"."""
        self.proc.wait(timeout)
        self._reader.join(10)


class ChildDied(RuntimeError):
    """A child process of terminals ended before it was told to."""


def _wait(what: str, condition: Any, children: list[Child], cap: float = PHASE_CAP_S) -> float:
    started = time.monotonic()
    while not condition():
        dead = [(c.first, c.proc.returncode) for c in children if c.final is None and c.proc.poll() is not None]
        if dead:
            raise ChildDied(f"fleet: while waiting for {what}, children (first terminal, exit status) ended: {dead}")
        if time.monotonic() - started > cap:
            raise TimeoutError(f"fleet: {what} not reached in {cap} s")
        time.sleep(0.05)
    return time.monotonic() - started


def measure(workdir: Path) -> list[dict[str, Any]]:
    import paho.mqtt.client as mqtt
    import paho.mqtt.publish as mqtt_publish

    from reader.uplink.hotlist import encode_full
    from tests.support.mosquitto import MosquittoBroker
    from tests.support.mqtt_sink import TapSink

    key = Ed25519PrivateKey.generate()
    public_hex = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    broker = MosquittoBroker(workdir / "broker", extra_config=BROKER_CONFIG)
    broker.start()

    def publish_hotlist(version: int) -> None:
        entries = [bytes([version]) * 16, os.urandom(16)]
        document = encode_full(version, entries, key)
        mqtt_publish.single(
            HOTLIST_TOPIC, document, qos=1, retain=True, hostname=broker.host, port=broker.port, protocol=mqtt.MQTTv5
        )

    sink = TapSink(broker.host, broker.port, topic="sscard/taps/#", client_id="fleet-backoffice")
    children: list[Child] = []
    shm = Path("/dev/shm")
    queues_root = Path(tempfile.mkdtemp(prefix="sscard-fleet-", dir=shm if shm.is_dir() else workdir))
    try:
        sink.start()
        publish_hotlist(1)
        started = time.monotonic()
        for first in range(0, TERMINALS, TERMINALS_PER_PROCESS):
            count = min(TERMINALS_PER_PROCESS, TERMINALS - first)
            children.append(Child(first, count, broker.port, public_hex, queues_root))
        workers = 2 * TERMINALS

        def connected() -> int:
            return sum(c.status.get("connected", 0) for c in children)

        def on_version(version: str) -> int:
            return sum(c.status.get("versions", []).count(version) for c in children)

        first_up_s = _wait("all connected at start", lambda: connected() == workers, children)
        first_up_s = time.monotonic() - started
        backlog = TERMINALS * BACKLOG
        _wait("a third of the backlog delivered", lambda: len(sink.taps) >= backlog // 3, children)
        delivered_before = len(sink.taps)
        broker.stop()
        down_at = time.monotonic()
        _wait("every client noticed", lambda: connected() == 0, children, cap=60)
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        broker.start()
        up_at = time.monotonic()
        # Every terminal's own reconnect time comes from its own report (below); this is when all were back.
        _wait("all reconnected", lambda: connected() == workers, children)
        for child in children:
            child.send("stop_producing")
        _wait("producers stopped", lambda: all(c.enqueued is not None for c in children), children)
        expected = {
            (tid, tap_id)
            for c in children
            for tid, n in (c.enqueued or {}).items()
            for tap_id in (f"0000-{i:010d}" for i in range(n))
        }
        _wait("every queue empty", lambda: all(c.status.get("depth", 1) == 0 for c in children), children)
        sink.wait_for(len(expected), 30)
        time.sleep(1.0)  # let late duplicates arrive before counting them
        received = set(sink.taps)
        hotlist_at = time.monotonic()
        publish_hotlist(2)
        _wait("hotlist 2 everywhere", lambda: on_version("2") == TERMINALS, children, cap=120)
        for child in children:
            child.send("exit")  # all at once: each child takes seconds to stop its workers
        for child in children:
            child.finish()
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        sink.stop()
        broker.close()
        shutil.rmtree(queues_root, ignore_errors=True)

    reconnects: list[float] = []
    uplink_reconnects: list[float] = []
    hotlist_s: list[float] = []
    failures = 0
    for child in children:
        final = child.final or {}
        for name, times in final.get("connects", {}).items():
            after = [t - up_at for t in times if t >= up_at]
            if after:
                reconnects.append(after[0])
                if name.startswith("uplink-"):
                    uplink_reconnects.append(after[0])
        hotlist_s += [v["2"] - hotlist_at for v in final.get("hotlist_at", {}).values() if "2" in v]
        failures += sum(final.get("failures", {}).values())
    lost = len(expected - received)
    unexpected = len(received - expected)
    spread = percentiles(reconnects) if reconnects else {}
    hot = percentiles(hotlist_s) if hotlist_s else {}
    return [
        {
            "metric": "terminals (uplink + hotlist sync each, own client ids)",
            "unit": "terminals",
            "value": TERMINALS,
            "mqtt_sessions": workers,
            "processes": len(children),
        },
        {"metric": "start-up: all sessions open", "unit": "s", "value": first_up_s},
        {
            "metric": "broker restart: all sessions back, from the broker listening",
            "unit": "s",
            "value": spread.get("max"),
            "p50": spread.get("p50"),
            "p99": spread.get("p99"),
            "sessions_reconnected": len(reconnects),
            "uplinks_reconnected": len(uplink_reconnects),
            "down_s": round(up_at - down_at, 2),
            "delivered_before_restart": delivered_before,
        },
        {"metric": "taps delivered", "unit": "taps", "value": len(received & expected), "queued": len(expected)},
        {"metric": "taps lost", "unit": "taps", "value": lost, "target": "0", "meets": lost == 0 and unexpected == 0},
        {"metric": "taps duplicated (received more than once)", "unit": "taps", "value": sink.duplicates},
        {
            "metric": "hotlist update in force on every terminal",
            "unit": "s",
            "value": hot.get("max"),
            "p50": hot.get("p50"),
            "p99": hot.get("p99"),
            "terminals": len(hotlist_s),
        },
        {"metric": "connect and publish failures counted by the workers", "unit": "count", "value": failures},
    ]


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="sscard-bench-fleet-", dir=os.environ.get("BENCH_TMP")) as tmp:
        rows = measure(Path(tmp))
    write(
        "fleet",
        rows,
        notes=(
            f"{TERMINALS} terminals in processes of {TERMINALS_PER_PROCESS} (paho's select() takes no fd >= 1024), "
            f"backlog {BACKLOG} taps each plus one every {TRICKLE_S:g} s; one Mosquitto, restarted (SIGTERM, down "
            f"{DOWN_S:g} s) once a third of the backlog was delivered; default reconnect backoff (1 s doubling to "
            "120 s, equal jitter); queue files in /dev/shm."
        ),
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], Path(sys.argv[6]))
    else:
        from reader.log import configure_logging

        configure_logging("warning")
        run()
