"""Start-up time to READY=1, and the CPU the daemon uses while it waits for a card.

`sscard run --config` runs as a child with a notify socket of ours (bench/daemon_process.py),
on the virtual bench: pcscd with the vpcd readers, the virtual PSAM in slot 1, no card in
slot 0, the demo's HTTP uplink (config/demo.toml: a loopback URL where nothing listens, so a
batch to send fails at connect and backs off). Start-up is measured from just before
the fork to the READY=1 datagram, on a fresh state folder each time (the queue and the
journal are created, as on a new terminal).

Start-up holding a backlog: BACKLOG_TAPS (1,000,000) queued taps in a queue file on disk,
opened by `TapQueue` alone (constructor to return: the checks it runs, then ready) and by the
daemon (fork to READY=1), after a clean stop (SIGTERM, or close(): the clean-shutdown marker
is there) and after an unclean one (SIGKILL while the queue is open: no marker), each with the
page cache warm and cold. Cold: `sync`, then posix_fadvise(POSIX_FADV_DONTNEED) on the
database, its WAL and its shared-memory file, as after a power cut; only the queue file is
evicted, not the interpreter or the project's code. Warm: the queue's files are read once
just before, as on a terminal restarted a moment after it stopped.

Idle CPU is the process's user + system time (every thread, from /proc/PID/stat) over an
idle window after READY, as a share of one core; the voluntary context switches of its
threads over the same window say how often it wakes (blocking waits wake rarely, a busy
poll would show thousands). pcscd's own CPU over the window is shown apart: its 400 ms
presence polling of the vpcd slots is not the daemon's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon_process import DaemonProcess, process_cpu_seconds, write_config
from bench.queue_throughput import BENCH_MAX_BYTES, BENCH_MAX_TAPS, bulk_load
from bench.report import percentiles, write
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from sscard_sim.pcscd import VPCD_PORTS, VPCD_READERS, PcscdBench, wait_for_presence
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink

STARTS = 5
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "10"))
SETTLE_S = 2.0
SAM_SLOT = VPCD_READERS[1]
BACKLOG_TAPS = int(os.environ.get("BENCH_STARTUP_TAPS", "1000000"))
BACKLOG_ROUNDS = int(os.environ.get("BENCH_STARTUP_ROUNDS", "3"))
TARGET_MS = 1000.0
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (("clean", "warm"), ("clean", "cold"), ("unclean", "warm"), ("unclean", "cold"))


class BenchFailure(RuntimeError):
    """The daemon did not start or stop as expected."""


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="sscard-bench-start-") as tmp:
        backlog = make_backlog(Path(tmp))
        backlog_rows = queue_backlog_rows(backlog)
        rows = daemon_rows(Path(tmp), backlog)
    write(
        "startup",
        rows + backlog_rows,
        notes=(
            f"{STARTS} starts of `sscard run --config` (config/demo.toml, fresh state folder each, the demo's HTTP "
            "uplink at a loopback port where nothing listens) on pcscd with the vpcd readers and the virtual PSAM; "
            f"start-up = fork to the READY=1 datagram on our NOTIFY_SOCKET. Idle: {SETTLE_S:g} s after READY, "
            f"CPU time from /proc/PID/stat (10 ms ticks) over {IDLE_S:g} s (BENCH_IDLE_S to change). Backlog: "
            f"{BACKLOG_TAPS:,} taps (BENCH_STARTUP_TAPS) bulk-loaded into a queue file on "
            f"{tempfile.gettempdir()}, {BACKLOG_ROUNDS} rounds (BENCH_STARTUP_ROUNDS) of each variant; "
            "clean = the previous stop was close()/SIGTERM, unclean = SIGKILL while open; cold = sync + "
            "POSIX_FADV_DONTNEED on the database, -wal and -shm. After a clean stop only the cheap checks "
            "run before ready (the whole-file quick_check follows in the background); after an unclean "
            "stop the file is read ahead sequentially, then quick_check runs before ready."
        ),
    )


def daemon_rows(tmp: Path, backlog: Backlog) -> list[dict[str, Any]]:
    """The daemon on the virtual bench: fresh start-ups, idle figures, then start-ups holding the backlog."""
    rows: list[dict[str, Any]] = []
    with (
        PcscdBench() as bench,
        VpcdLink(VirtualPsam.from_profile("demo-psam"), port=VPCD_PORTS[SAM_SLOT]),
    ):
        if not wait_for_presence(SAM_SLOT, present=True):
            raise BenchFailure("pcscd never saw the virtual PSAM")
        startups: list[float] = []
        stops: list[float] = []
        for n in range(STARTS):
            workdir = Path(tmp) / f"start-{n}"
            daemon = DaemonProcess(write_config(workdir), workdir)
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
        backlog_rows = daemon_backlog_rows(backlog)
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
    return rows + backlog_rows


# ----------------------------------------------------------------------------- backlog


def evict(path: Path) -> None:
    """Write back and drop the queue's files from the page cache, as if the machine had just booted."""
    os.sync()
    for suffix in ("", "-wal", "-shm"):
        try:
            fd = os.open(f"{path}{suffix}", os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(path: Path) -> None:
    """Read the queue's files once, so every page is in the page cache (a terminal that just stopped)."""
    for suffix in ("", "-wal"):
        try:
            with open(f"{path}{suffix}", "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass
        except FileNotFoundError:
            continue


def kill_while_open(settings: QueueSettings) -> None:
    """A child opens the queue, records one tap and is SIGKILLed with the queue open: an unclean stop."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from reader.log import configure_logging
        from reader.uplink.queue import TapQueue
        from reader.uplink.settings import QueueSettings
        configure_logging("error")
        queue = TapQueue(QueueSettings(path=Path({str(settings.path)!r}), max_taps={settings.max_taps},
                                       max_bytes={settings.max_bytes}, min_free_bytes=0))
        queue.enqueue({{"terminal_id": "BENCH-BUS-0001", "tap_id": "unclean-" + str(time.time_ns())}})
        print("open", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    if line != "open":
        raise BenchFailure(f"the child did not open the queue: {line!r}")


def _measure(
    rounds: int, path: Path, stop_before: Callable[[str], None], start: Callable[[], float]
) -> dict[tuple[str, str], list[float]]:
    """Milliseconds per variant; `stop_before(kind)` leaves the file as after a clean or unclean stop."""
    samples: dict[tuple[str, str], list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for stop, cache in VARIANTS:
            stop_before(stop)
            if cache == "cold":
                evict(path)
            else:
                warm(path)
            samples[(stop, cache)].append(start() * 1000)
    return samples


def _rows(what: str, samples: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    rows = []
    for (stop, cache), values in samples.items():
        stats = percentiles(values)
        row: dict[str, Any] = {
            "metric": f"start-up holding {BACKLOG_TAPS:,} taps: {what}",
            "variant": f"{stop} stop, {cache} cache",
            "unit": "ms",
            "n": stats["n"],
            "p50": stats["p50"],
            "max": stats["max"],
        }
        if stop == "clean":
            row["target"] = f"<= {TARGET_MS:g} ms"
            row["meets"] = stats["p50"] <= TARGET_MS
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Backlog:
    """The queue file holding the backlog, shared by the queue and the daemon measurements."""

    settings: QueueSettings
    workdir: Path
    load_s: float


def make_backlog(tmp: Path) -> Backlog:
    """Bulk-load the backlog (as the queue throughput benchmark does), then close it cleanly once."""
    workdir = tmp / "backlog"
    workdir.mkdir()
    settings = QueueSettings(path=workdir / "queue.sqlite3", max_taps=BENCH_MAX_TAPS, max_bytes=BENCH_MAX_BYTES)
    load_s, _ = bulk_load(settings.path, BACKLOG_TAPS)
    TapQueue(settings).close()  # the bulk load was no clean stop of ours: one full check, then the marker
    return Backlog(settings, workdir, load_s)


def queue_backlog_rows(backlog: Backlog) -> list[dict[str, Any]]:
    """TapQueue() with the backlog, clean/unclean x warm/cold."""
    settings = backlog.settings
    checked: dict[str, str] = {}

    def stop_before(kind: str) -> None:
        if kind == "unclean":
            kill_while_open(settings)

    def open_queue() -> float:
        started = time.perf_counter()
        queue = TapQueue(settings)
        seconds = time.perf_counter() - started
        checked[queue.previous_stop] = queue.open_check
        if queue.moved_aside is not None:
            raise BenchFailure(f"the backlog was moved aside: {queue.moved_aside}")
        queue.close()
        return seconds

    rows = _rows("TapQueue() open to ready", _measure(BACKLOG_ROUNDS, settings.path, stop_before, open_queue))
    for row in rows:
        row["checked"] = checked.get(row["variant"].split()[0], "?")
    rows[0]["file_mib"] = round(settings.path.stat().st_size / 2**20, 1)
    rows[0]["bulk_load_s"] = round(backlog.load_s, 1)
    return rows


def daemon_backlog_rows(backlog: Backlog) -> list[dict[str, Any]]:
    """`sscard run` to READY=1 with the backlog as its queue, clean/unclean x warm/cold (needs the bench)."""
    workdir = backlog.workdir / "daemon"
    config = write_config(
        workdir,
        queue_path=backlog.settings.path,
        max_taps=BENCH_MAX_TAPS,
        max_bytes=BENCH_MAX_BYTES,
    )

    def stop_before(kind: str) -> None:
        if kind == "unclean":
            daemon = DaemonProcess(config, workdir)
            daemon.start()
            assert daemon.process is not None
            daemon.process.kill()
            daemon.stop()

    def ready() -> float:
        daemon = DaemonProcess(config, workdir)
        try:
            seconds = daemon.start()
        finally:
            status, _ = daemon.stop()
        if status != 0:
            raise BenchFailure(f"SIGTERM ended the daemon with status {status}")
        return seconds

    return _rows("`sscard run` fork to READY=1", _measure(BACKLOG_ROUNDS, backlog.settings.path, stop_before, ready))


if __name__ == "__main__":
    run()
