"""Start-up time to READY=1, and the CPU the daemon uses while it waits for a card.

`sscard run --config` runs as a child with a notify socket of ours (bench/daemon_process.py),
on the virtual bench: pcscd with the vpcd readers, the virtual PSAM in slot 1, no card in
slot 0, the HTTP uplink enabled with nothing to send. Start-up is measured from just before
the fork to the READY=1 datagram, on a fresh state folder each time (the queue and the
journal are created, as on a new terminal).

Idle CPU is the process's user + system time (every thread, from /proc/PID/stat) over an
idle window after READY, as a share of one core; the voluntary context switches of its
threads over the same window say how often it wakes (blocking waits wake rarely, a busy
poll would show thousands). pcscd's own CPU over the window is shown apart: its 400 ms
presence polling of the vpcd slots is not the daemon's.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.daemon_process import DaemonProcess, process_cpu_seconds, write_config
from bench.report import percentiles, write
from reader.backends.pcsc import wait_for_presence
from reader.sim.pcscd import VPCD_PORTS, VPCD_READERS, PcscdBench
from reader.sim.psam import VirtualPsam
from reader.sim.vpcd import VpcdLink

STARTS = 5
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "10"))
SETTLE_S = 2.0
CLOSED_PORT_URL = "http://127.0.0.1:9/taps"
SAM_SLOT = VPCD_READERS[1]


class BenchFailure(RuntimeError):
    """The daemon did not start or stop as expected."""


def run() -> None:
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sscard-bench-start-") as tmp,
        PcscdBench() as bench,
        VpcdLink(VirtualPsam.from_profile("demo-psam"), port=VPCD_PORTS[SAM_SLOT]),
    ):
        if not wait_for_presence(SAM_SLOT, present=True):
            raise BenchFailure("pcscd never saw the virtual PSAM")
        startups: list[float] = []
        stops: list[float] = []
        for n in range(STARTS):
            workdir = Path(tmp) / f"start-{n}"
            daemon = DaemonProcess(write_config(workdir, http_url=CLOSED_PORT_URL), workdir)
            try:
                startups.append(daemon.start() * 1000)
                if n == STARTS - 1:
                    # The last one stays up: idle CPU, wake-ups and memory, then its stop.
                    time.sleep(SETTLE_S)
                    rss_kib, hwm_kib = daemon.memory_kib()
                    threads = daemon.threads()
                    before = daemon.cpu()
                    pcscd_before = process_cpu_seconds(bench.process.pid) if bench.process else None
                    time.sleep(IDLE_S)
                    after = daemon.cpu()
                    pcscd_after = process_cpu_seconds(bench.process.pid) if bench.process else None
            finally:
                status, seconds = daemon.stop()
            if status != 0:
                raise BenchFailure(f"SIGTERM ended the daemon with status {status}")
            stops.append(seconds * 1000)
    window = after.at - before.at
    stats = percentiles(startups)
    rows.append(
        {
            "metric": "start-up: fork -> READY=1",
            "unit": "ms",
            "n": stats["n"],
            "p50": stats["p50"],
            "p99": stats["p99"],
            "max": stats["max"],
            "first": startups[0],
            "target": "<= 1000 ms",
            "meets": stats["p50"] <= 1000,
        }
    )
    stop_stats = percentiles(stops)
    rows.append(
        {
            "metric": "stop: SIGTERM -> exit 0 (idle)",
            "unit": "ms",
            "n": stop_stats["n"],
            "p50": stop_stats["p50"],
            "p99": stop_stats["p99"],
            "max": stop_stats["max"],
        }
    )
    idle = 100 * (after.cpu_s - before.cpu_s) / window
    rows.append(
        {
            "metric": f"idle CPU, no card, over {window:.1f} s",
            "unit": "% of one core",
            "p50": idle,
            "target": "<= 1 %",
            "meets": idle <= 1.0,
        }
    )
    rows.append(
        {
            "metric": "idle wake-ups (voluntary context switches, all threads)",
            "unit": "per s",
            "p50": (after.wakeups - before.wakeups) / window,
            "threads": threads,
        }
    )
    rows.append({"metric": "RSS while idle (empty queue)", "unit": "MiB", "p50": rss_kib / 1024, "max": hwm_kib / 1024})
    if pcscd_before is not None and pcscd_after is not None:
        rows.append(
            {
                "metric": "pcscd CPU over the same window (not the daemon)",
                "unit": "% of one core",
                "p50": 100 * (pcscd_after - pcscd_before) / window,
            }
        )
    write(
        "startup",
        rows,
        notes=(
            f"{STARTS} starts of `sscard run --config` (config/demo.toml, fresh state folder each, HTTP uplink "
            "enabled with an empty queue) on pcscd with the vpcd readers and the virtual PSAM; start-up = fork to "
            f"the READY=1 datagram on our NOTIFY_SOCKET. Idle: {SETTLE_S:g} s after READY, CPU time from "
            f"/proc/PID/stat (10 ms ticks) over {IDLE_S:g} s (BENCH_IDLE_S to change)."
        ),
    )


if __name__ == "__main__":
    run()
