"""The durable queue: enqueue rate, drain rate of a large backlog, memory while holding one.

- Enqueue: `TapQueue.enqueue` as the tap pipeline calls it, one tap per call, each call a
  COMMIT at synchronous=FULL (WAL synced before it returns), on the machine's disk.
- Drain: a backlog of 100,000 and of 1,000,000 daemon-shaped tap records is generated
  inside SQLite straight into the queue's tables in one transaction (what the benchmark
  needs is the backlog, not the time to build it), then the real uplink worker drains it to zero: the
  HTTP uplink to the loopback back office (bench/backoffice.py, in its own process) and
  the MQTT uplink to a real Mosquitto (no subscriber: the broker's PUBACK is what lets a
  row leave the queue). Each uplink runs with its default settings (HTTP batches of 200,
  MQTT QoS 1 with 20 publishes in flight). A drain is stopped at DRAIN_CAP_S and reported
  as not finished, with the rate it reached.
- Memory: `sscard run --config` (a child, bench/daemon_process.py) holding a 1,000,000-tap
  backlog while its uplink cannot reach the back office, against the same daemon with an
  empty queue; RSS and peak RSS from /proc after READY=1 and a few seconds of running.
  Its start-up to READY=1 is shown too: the queue's integrity check at open reads the
  whole file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import tempfile
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.backoffice import BackOfficeProcess
from bench.daemon_process import DaemonProcess, write_config
from bench.report import percentiles, write
from reader.daemon.policy import Decision, Fare, Outcome, Reason
from reader.daemon.record import Debit, TapIdGenerator, tap_record
from reader.uplink.http_uplink import HttpUplink
from reader.uplink.mqtt_uplink import MqttUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import HttpUplinkSettings, MqttUplinkSettings, QueueSettings
from reader.uplink.worker import UplinkWorker
from sscard_sim.pcscd import VPCD_PORTS, VPCD_READERS, PcscdBench, wait_for_presence
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink
from tests.support.mosquitto import MosquittoBroker

ENQUEUE_TAPS = int(os.environ.get("BENCH_ENQUEUE_TAPS", "3000"))
BACKLOGS = tuple(int(n) for n in os.environ.get("BENCH_BACKLOGS", "100000,1000000").split(","))
DRAIN_CAP_S = float(os.environ.get("BENCH_DRAIN_CAP_S", "300"))
RSS_BACKLOG = max(BACKLOGS)
RSS_SETTLE_S = 5.0
TERMINAL = "BENCH-BUS-0001"
SAM_SLOT = VPCD_READERS[1]
CLOSED_PORT_URL = "http://127.0.0.1:9/taps"
TARGET_RATE = 5000.0
TARGET_MILLION_S = 300.0
TARGET_RSS_MIB = 100.0
TARGET_STARTUP_MS = 1000.0
BENCH_MAX_TAPS = 2_000_000
BENCH_MAX_BYTES = 4 * 1024**3


class BenchFailure(RuntimeError):
    """A drain or a daemon did not behave as the benchmark needs."""


def sample_record(tap_id: str) -> dict[str, Any]:
    """A tap record as the bus pipeline writes it for a paid ride."""
    return tap_record(
        tap_id=tap_id,
        terminal_id=TERMINAL,
        profile="bus",
        reader="pcsc-contactless",
        when=_now(),
        decision=Decision(Outcome.ACCEPTED, Reason.OK, Fare(200, 200, False, None)),
        token=os.urandom(32).hex(),
        region="510100",
        hotlist_version="2026-11-23.1",
        debit=Debit(
            balance_before=5000,
            balance_after=4800,
            atc=17,
            tac="1A2B3C4D",
            psam_sequence=1234,
            mac2_verified=True,
        ),
    )


def record_size() -> int:
    """Bytes of one queued record (its JSON text as the queue stores it)."""
    return len(json.dumps(sample_record("0" * 32), separators=(",", ":"), ensure_ascii=False).encode())


def _now() -> dt.datetime:
    return dt.datetime.now(zoneinfo.ZoneInfo("Asia/Shanghai"))


def _settings(path: Path) -> QueueSettings:
    """Default queue settings, except bounds large enough for the 1,000,000-tap backlog."""
    return QueueSettings(path=path, max_taps=BENCH_MAX_TAPS, max_bytes=BENCH_MAX_BYTES)


# ----------------------------------------------------------------------------- enqueue


def enqueue_rows(workdir: Path) -> list[dict[str, Any]]:
    ids = TapIdGenerator()
    records = [sample_record(ids.next()) for _ in range(ENQUEUE_TAPS)]
    with TapQueue(_settings(workdir / "enqueue.sqlite3")) as queue:
        samples = []
        started = time.perf_counter()
        for record in records:
            start = time.perf_counter()
            queue.enqueue(record)
            samples.append((time.perf_counter() - start) * 1000)
        elapsed = time.perf_counter() - started
    stats = percentiles(samples)
    return [
        {
            "metric": "durable enqueue rate (one COMMIT per tap, synchronous=FULL)",
            "unit": "taps/s",
            "n": ENQUEUE_TAPS,
            "value": ENQUEUE_TAPS / elapsed,
        },
        {
            "metric": "enqueue latency per tap",
            "unit": "ms",
            "n": stats["n"],
            "value": stats["p50"],
            "p50": stats["p50"],
            "p99": stats["p99"],
            "max": stats["max"],
        },
    ]


# ----------------------------------------------------------------------------- backlog


def bulk_load(path: Path, count: int) -> tuple[float, int]:
    """Write `count` queued taps into a new queue file; (seconds, bytes of record text).

    The rows are generated inside SQLite (a recursive CTE), each with its own tap id, in
    one transaction under a rollback journal (a one-transaction WAL would write every page
    twice); the queue's triggers keep its depth and byte totals as an enqueue would.
    """
    TapQueue(_settings(path)).close()
    template = json.dumps(sample_record("@@TAP_ID@@"), separators=(",", ":"), ensure_ascii=False)
    head, tail = template.split("@@TAP_ID@@")
    size = len(head.encode()) + 32 + len(tail.encode())
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        # Tap ids: the backlog size then the row number, so that no two backlogs share an id
        # (the back office remembers the ids, and the idempotency keys derived from them).
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO taps (terminal_id, tap_id, body, size, enqueued_at) "
            "SELECT ?, printf('%08x%024x', ?, i), ? || printf('%08x%024x', ?, i) || ?, ?, ? FROM n",
            (count - 1, TERMINAL, count, head, count, tail, size, time.time()),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return time.perf_counter() - started, size * count


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def drain(path: Path, count: int, uplink: Callable[[TapQueue], UplinkWorker]) -> dict[str, Any]:
    """Open the queue (its integrity check included), then time the uplink from start to depth zero."""
    opened = time.perf_counter()
    queue = TapQueue(_settings(path))
    open_s = time.perf_counter() - opened
    worker = uplink(queue)
    half_s: float | None = None
    started = time.perf_counter()
    worker.start()
    try:
        while True:
            delivered = worker.stats().delivered
            elapsed = time.perf_counter() - started
            if half_s is None and delivered >= count / 2:
                half_s = elapsed
            if delivered >= count or elapsed > DRAIN_CAP_S:
                break
            if not worker.is_alive():
                raise BenchFailure(f"{worker.name} died: {worker.stats().last_error}")
            time.sleep(0.05)
    finally:
        worker.stop()
        depth = queue.status().depth
        queue.close()
    stats = worker.stats()
    return {
        "delivered": stats.delivered,
        "left": depth,
        "seconds": elapsed,
        "rate": stats.delivered / elapsed,
        "first_half_rate": (count / 2) / half_s if half_s else None,
        "second_half_rate": (count / 2) / (elapsed - half_s) if half_s and depth == 0 else None,
        "open_s": open_s,
        "failures": stats.failures,
        "batches": stats.batches,
    }


def drain_rows(workdir: Path) -> tuple[list[dict[str, Any]], Path | None]:
    """Drain every backlog size over HTTP and MQTT; also returns the largest backlog file."""
    rows: list[dict[str, Any]] = []
    largest: Path | None = None
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    try:
        with BackOfficeProcess() as backoffice:
            for count in BACKLOGS:
                source = workdir / f"backlog-{count}.sqlite3"
                load_s, nbytes = bulk_load(source, count)
                rows.append(
                    {
                        "metric": f"backlog of {count:,} built (bulk load, not a drain figure)",
                        "unit": "s",
                        "value": load_s,
                        "file_mib": source.stat().st_size / 2**20,
                        "record_bytes": nbytes // count,
                    }
                )
                received_before = backoffice.stats()["distinct"]
                http = _drain_row(
                    count,
                    "HTTP (loopback back office)",
                    drain(
                        _copy(source, workdir / "http.sqlite3"),
                        count,
                        lambda queue: HttpUplink(queue, HttpUplinkSettings(enabled=True, url=backoffice.url)),
                    ),
                )
                server = backoffice.stats()
                http["server_distinct"] = server["distinct"] - received_before
                rows.append(http)
                (workdir / "http.sqlite3").unlink()
                mqtt_settings = MqttUplinkSettings(
                    enabled=True, host=broker.host, port=broker.port, tls=None, client_id=f"bench-{count}"
                )
                rows.append(
                    _drain_row(
                        count,
                        "MQTT (Mosquitto, QoS 1)",
                        drain(
                            _copy(source, workdir / "mqtt.sqlite3"),
                            count,
                            lambda queue, s=mqtt_settings: MqttUplink(queue, s, terminal_id=TERMINAL),
                        ),
                    )
                )
                (workdir / "mqtt.sqlite3").unlink()
                if count == RSS_BACKLOG:
                    largest = source
                else:
                    source.unlink()
    finally:
        broker.close()
    return rows, largest


def _drain_row(count: int, uplink: str, result: dict[str, Any]) -> dict[str, Any]:
    finished = result["left"] == 0
    target = f">= {TARGET_RATE:g} taps/s"
    meets = result["rate"] >= TARGET_RATE
    if count >= 1_000_000:
        target += f", 1M in <= {TARGET_MILLION_S:g} s"
        meets = meets and finished and result["seconds"] <= TARGET_MILLION_S
    row = {
        "metric": f"drain {count:,} taps: {uplink}",
        "unit": "taps/s",
        "value": result["rate"],
        "seconds": result["seconds"],
        "delivered": result["delivered"],
        "left": result["left"],
        "first_half": result["first_half_rate"],
        "second_half": result["second_half_rate"],
        "open_s": result["open_s"],
        "failures": result["failures"],
        "target": target,
        "meets": meets,
    }
    if not finished:
        row["note"] = (
            f"stopped at the {DRAIN_CAP_S:g} s cap, not drained; "
            f"projected {count / max(result['rate'], 1e-9):.0f} s at this rate"
        )
    return row


# ----------------------------------------------------------------------------- memory


def rss_rows(workdir: Path, backlog: Path | None) -> list[dict[str, Any]]:
    """RSS of `sscard run` with an empty queue and holding the largest backlog."""
    rows: list[dict[str, Any]] = []
    cases: list[tuple[str, Path | None]] = [("empty queue", None)]
    if backlog is not None:
        cases.append((f"holding {RSS_BACKLOG:,} queued taps", backlog))
    with (
        PcscdBench(),
        VpcdLink(VirtualPsam.from_profile("demo-psam"), port=VPCD_PORTS[SAM_SLOT]),
    ):
        if not wait_for_presence(SAM_SLOT, present=True):
            raise BenchFailure("pcscd never saw the virtual PSAM")
        for index, (label, source) in enumerate(cases):
            folder = workdir / f"daemon-{index}"
            queue_path = folder / "queue.sqlite3"
            folder.mkdir(parents=True)
            if source is not None:
                source.rename(queue_path)
            config = write_config(
                folder,
                queue_path=queue_path,
                http_url=CLOSED_PORT_URL,
                max_taps=BENCH_MAX_TAPS,
                max_bytes=BENCH_MAX_BYTES,
            )
            daemon = DaemonProcess(config, folder)
            try:
                ready_s = daemon.start()
                time.sleep(RSS_SETTLE_S)
                rss, hwm = daemon.memory_kib()
            finally:
                status, _ = daemon.stop()
            if status != 0:
                raise BenchFailure(f"SIGTERM ended the daemon with status {status}")
            with TapQueue(_settings(queue_path), readonly=True) as queue:
                depth = queue.status().depth
            rows.append(
                {
                    "metric": f"daemon RSS, {label}, uplink unreachable",
                    "unit": "MiB",
                    "value": rss / 1024,
                    "peak": hwm / 1024,
                    "depth": depth,
                    "target": f"<= {TARGET_RSS_MIB:g} MiB",
                    "meets": rss / 1024 <= TARGET_RSS_MIB and hwm / 1024 <= TARGET_RSS_MIB,
                }
            )
            rows.append(
                {
                    "metric": f"daemon start-up: fork -> READY=1, {label} (queue check at open)",
                    "unit": "ms",
                    "value": ready_s * 1000,
                    "depth": depth,
                    "target": f"<= {TARGET_STARTUP_MS:g} ms",
                    "meets": ready_s * 1000 <= TARGET_STARTUP_MS,
                }
            )
    return rows


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="sscard-bench-queue-", dir=os.environ.get("BENCH_TMP")) as tmp:
        workdir = Path(tmp)
        rows = enqueue_rows(workdir)
        drained, largest = drain_rows(workdir)
        rows += drained
        rows += rss_rows(workdir, largest)
    defaults = QueueSettings()
    write(
        "queue_throughput",
        rows,
        notes=(
            f"enqueue: {ENQUEUE_TAPS} daemon-shaped records, one call each; drains: backlogs of "
            f"{', '.join(f'{n:,}' for n in BACKLOGS)} written in one transaction, then the uplink worker with its "
            f"default settings until depth 0 (cap {DRAIN_CAP_S:g} s, BENCH_DRAIN_CAP_S); open_s = opening the queue "
            "file (its quick_check) before the drain starts; MQTT without a subscriber. The benchmark raises the "
            f"queue bounds to {BENCH_MAX_TAPS:,} taps / {BENCH_MAX_BYTES // 2**20} MiB: the defaults "
            f"({defaults.max_taps:,} taps, {defaults.max_bytes // 2**20} MiB) hold at most "
            f"{min(defaults.max_taps, defaults.max_bytes // record_size()):,} taps of {record_size()} bytes, "
            f"then refuse new taps. RSS: `sscard run` after READY=1 and {RSS_SETTLE_S:g} s, "
            "HTTP uplink pointed at a closed port."
        ),
    )


if __name__ == "__main__":
    run()
