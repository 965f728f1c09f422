"""The hotlist at 8,000, 500,000 and 5,000,000 entries: load, lookup, memory, install.

For each size a signed full list of random entries is installed into a fresh list file (the
install figure: signature, order check, write, fsync, rename) and a delta of 1,000 adds and
1,000 removes is applied on top. Then a fresh child process, which has imported the
daemon's modules, measures what the daemon pays: `HotlistStore(path)` (the start-up load),
then 20,000 lookups of listed and 20,000 of unlisted tokens, each timed alone; RSS growth is
VmRSS after the load and after the lookups minus VmRSS before the load. The list file is in
the page cache (a terminal that just wrote or read it); mapped pages count in RSS only once
touched and are file-backed, so the kernel can drop them under pressure.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.report import percentiles, write
from reader.uplink.hotlist import HotlistStore, encode_delta, encode_full

SIZES = (8_000, 500_000, 5_000_000)
LOOKUPS = 20_000
CHANGES = 1_000


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(path: str, probes_path: str) -> None:
    """Measure in a clean process; prints one JSON object."""
    import reader.daemon.pipeline  # noqa: F401  (what the daemon has loaded before the hotlist)

    raw = Path(probes_path).read_bytes()
    probes = [raw[i : i + 32] for i in range(0, len(raw), 32)]
    before = _rss_kib()
    began = time.perf_counter()
    store = HotlistStore(Path(path))
    load_s = time.perf_counter() - began
    after_load = _rss_kib()
    timings: list[float] = []
    hits = 0
    clock = time.perf_counter_ns
    for token in probes:
        start = clock()
        listed = store.is_listed(token)
        timings.append((clock() - start) / 1000)
        hits += listed
    after_lookups = _rss_kib()
    print(
        json.dumps(
            {
                "load_ms": load_s * 1000,
                "rss_load_kib": after_load - before,
                "rss_lookups_kib": after_lookups - before,
                "hits": hits,
                "lookup_us": timings,
                "entries": len(store.current),
            }
        )
    )


def _measure(size: int, workdir: Path, key: Ed25519PrivateKey) -> list[dict[str, Any]]:
    entries = [os.urandom(16) for _ in range(size)]
    document = encode_full(1, entries, key)
    store = HotlistStore(workdir / "hotlist.bin")
    began = time.perf_counter()
    store.receive(document, key.public_key())
    install_s = time.perf_counter() - began
    del document
    removes = random.sample(entries, CHANGES)
    adds = [os.urandom(16) for _ in range(CHANGES)]
    delta = encode_delta(1, 2, adds=adds, removes=removes, count=size, key=key)
    began = time.perf_counter()
    store.receive(delta, key.public_key())
    delta_s = time.perf_counter() - began
    listed = set(entries) - set(removes) | set(adds)
    # Tokens are 32 bytes; the entry is their first 16. Half listed, half not, shuffled.
    probes = [e + os.urandom(16) for e in random.choices(sorted(listed), k=LOOKUPS // 2)]
    probes += [os.urandom(32) for _ in range(LOOKUPS // 2)]
    random.shuffle(probes)
    (workdir / "probes").write_bytes(b"".join(probes))
    del entries, listed, store
    out = subprocess.run(
        [sys.executable, "-m", "bench.hotlist", "--child", str(workdir / "hotlist.bin"), str(workdir / "probes")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["hits"] != LOOKUPS // 2 or result["entries"] != size:
        raise RuntimeError(f"wrong lookups at {size}: {result['hits']} hits, {result['entries']} entries")
    lookups = percentiles(result["lookup_us"])
    file_mib = (workdir / "hotlist.bin").stat().st_size / 2**20
    label = f"{size:,}"
    return [
        {
            "variant": label,
            "metric": "load at start-up (HotlistStore)",
            "unit": "ms",
            "p50": result["load_ms"],
            "target": "<= 1000 ms (whole start-up)",
            "meets": result["load_ms"] <= 1000,
        },
        {"variant": label, "metric": "lookup", "unit": "us", "p50": lookups["p50"], "p99": lookups["p99"]},
        {
            "variant": label,
            "metric": "RSS growth: after load / after lookups",
            "unit": "MiB",
            "p50": result["rss_load_kib"] / 1024,
            "max": result["rss_lookups_kib"] / 1024,
            "file": round(file_mib, 1),
            "target": "<= 100 MiB",
            "meets": max(result["rss_lookups_kib"] / 1024, file_mib) <= 100,
        },
        {"variant": label, "metric": "install signed full list", "unit": "ms", "p50": install_s * 1000},
        {"variant": label, "metric": f"apply delta (+{CHANGES}, -{CHANGES})", "unit": "ms", "p50": delta_s * 1000},
    ]


def run() -> None:
    key = Ed25519PrivateKey.generate()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sscard-bench-hotlist-", dir=os.environ.get("BENCH_TMP")) as tmp:
        for size in SIZES:
            workdir = Path(tmp) / str(size)
            workdir.mkdir()
            rows += _measure(size, workdir, key)
    write(
        "hotlist",
        rows,
        notes=(
            f"random 16-byte entries; {LOOKUPS:,} lookups (half listed) timed one by one in a fresh child process "
            "after importing the daemon; RSS growth over the child's VmRSS before the load; file = size of the "
            "list file (the most the mapping can add if every page is touched); the memory target is met "
            "when both are within it. BENCH_TMP picks the folder (default: the system temp folder)."
        ),
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        run()
