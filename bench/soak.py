"""Soak: 100,000 bus taps through the whole daemon with a 5,000,000-entry hotlist; RSS must stay flat.

A fresh child process starts the real `Daemon` (config/demo.toml, passback off, no uplink,
so the queue grows by every tap) on in-process readers with the virtual card and PSAM, a
hotlist of 5,000,000 entries in its state folder. Each tap is a fresh card in the same
state: a paid ride, one record committed. VmRSS is read from /proc after a warm-up of
`WARMUP` taps and after every further `STEP` taps; the figure is the growth per `STEP`
taps (the slope of a least-squares line through the samples) and the growth from the first
sample to the last. Pages of the memory-mapped hotlist count once touched, as in service.

    python -m bench.soak                 # 100,000 taps (BENCH_SOAK_TAPS to change)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.report import write
from reader.uplink.hotlist import HotlistStore, encode_full

TAPS = int(os.environ.get("BENCH_SOAK_TAPS", "100000"))
HOTLIST_ENTRIES = int(os.environ.get("BENCH_SOAK_HOTLIST", "5000000"))
WARMUP = 1_000
STEP = 10_000
TAP_TIMEOUT_S = 10.0
TARGET_GROWTH_MIB = 1.0
"""Per 10,000 taps: a terminal serving 2,000 taps a day for a year must not grow past its memory."""


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(workdir: str, taps: int) -> None:
    """Run the daemon for `taps` taps after the warm-up; print the RSS samples as one JSON line."""
    from bench.tap_overhead import bench_config
    from reader.backends.base import ReaderKind
    from reader.backends.loop import LoopState
    from reader.daemon.app import Daemon
    from reader.service.notify import SystemdNotifier
    from sscard_sim.card import VirtualCard
    from sscard_sim.inprocess import InProcessReader
    from sscard_sim.profile import load_card_profile
    from sscard_sim.psam import VirtualPsam

    config = bench_config(Path(workdir), uplink=False)
    profile = load_card_profile("sichuan")
    card_reader = InProcessReader("soak-card")
    sam_reader = InProcessReader("soak-sam", ReaderKind.SAM)
    sam_reader.insert(VirtualPsam.from_profile("demo-psam"))
    daemon = Daemon(config, readers=[card_reader], sam=sam_reader, notifier=SystemdNotifier(None))
    daemon.start()
    loop = daemon.loops[0]
    samples: list[tuple[int, int]] = []
    began = time.monotonic()

    def wait(condition: Any, what: str) -> None:
        deadline = time.monotonic() + TAP_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"soak: {what} within {TAP_TIMEOUT_S} s")
            time.sleep(0.0002)

    try:
        wait(lambda: loop.state is LoopState.WAITING, "the reader loop waiting")
        for n in range(WARMUP + taps):
            seen = loop.taps
            card_reader.insert(VirtualCard(profile, random=random.Random(n).randbytes))
            wait(lambda seen=seen: loop.taps > seen and loop.state is LoopState.WAITING_REMOVAL, f"tap {n} done")
            card_reader.remove()
            wait(lambda: loop.state is LoopState.WAITING, f"tap {n}: the loop back to waiting")
            done = n + 1 - WARMUP
            if done >= 0 and done % STEP == 0:
                samples.append((done, _rss_kib()))
        status = daemon.status()
        services = daemon.services
        entries = len(services.hotlist.current) if services is not None else None
    finally:
        daemon.stop()
    queue = status["queue"]
    print(
        json.dumps(
            {
                "samples": samples,
                "seconds": time.monotonic() - began,
                "depth": queue["depth"] if isinstance(queue, dict) else None,
                "hotlist_entries": entries,
            }
        )
    )


def _slope(samples: list[tuple[int, int]]) -> float:
    """KiB per tap, least squares."""
    xs, ys = [x for x, _ in samples], [y for _, y in samples]
    return statistics.linear_regression(xs, ys).slope


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="sscard-bench-soak-") as tmp:
        workdir = Path(tmp)
        key = Ed25519PrivateKey.generate()
        entries = [os.urandom(16) for _ in range(HOTLIST_ENTRIES)]
        HotlistStore(workdir / "hotlist.bin").receive(encode_full(1, entries, key), key.public_key())
        del entries
        out = subprocess.run(
            [sys.executable, "-m", "bench.soak", "--child", str(workdir), str(TAPS)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["depth"] != TAPS + WARMUP or result["hotlist_entries"] != HOTLIST_ENTRIES:
        raise RuntimeError(f"soak: {result['depth']} taps queued, hotlist of {result['hotlist_entries']}")
    samples = [(int(done), int(kib)) for done, kib in result["samples"]]
    per_step_mib = _slope(samples) * STEP / 1024 if len(samples) > 1 else 0.0
    rows: list[dict[str, Any]] = [
        {
            "metric": f"RSS growth per {STEP:,} taps (least squares over {len(samples)} samples)",
            "unit": "MiB",
            "value": round(per_step_mib, 3),
            "target": f"<= {TARGET_GROWTH_MIB:g} MiB",
            "meets": per_step_mib <= TARGET_GROWTH_MIB,
        },
        {
            "metric": f"RSS after {WARMUP:,} warm-up taps -> after {samples[-1][0]:,} more",
            "unit": "MiB",
            "value": f"{samples[0][1] / 1024:.1f} -> {samples[-1][1] / 1024:.1f}",
        },
        {
            "metric": "taps per second (whole daemon, in process)",
            "unit": "taps/s",
            "value": round((TAPS + WARMUP) / result["seconds"], 1),
        },
        {"metric": "queue depth at the end (every tap recorded)", "unit": "taps", "value": result["depth"]},
    ]
    rows += [
        {"metric": f"RSS after {done:,} taps", "unit": "MiB", "value": round(kib / 1024, 2)} for done, kib in samples
    ]
    write(
        "soak",
        rows,
        notes=(
            f"{TAPS:,} paid bus taps after {WARMUP:,} warm-up taps, one child process: the real Daemon on "
            f"in-process readers, config/demo.toml with passback off and no uplink, a {HOTLIST_ENTRIES:,}-entry "
            "hotlist in its state folder; VmRSS from /proc/self/status"
        ),
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        run()
