"""Run the benchmarks (`make bench`), or those named: `python -m bench parsing startup`.

Each benchmark writes bench/results/<name>.json and prints its table; at the end the
figures that have a target are gathered into bench/results/summary.json and printed
together. Targets are reported, never asserted.
"""

from __future__ import annotations

import json
import sys
import time
from types import ModuleType

from bench import apdu_roundtrip, fleet, hotlist, mqtt_drain, parsing, queue_throughput, soak, startup, tap_overhead
from bench.report import RESULTS, write
from reader.log import configure_logging

BENCHMARKS: dict[str, ModuleType] = {
    "parsing": parsing,
    "apdu_roundtrip": apdu_roundtrip,
    "startup": startup,
    "tap_overhead": tap_overhead,
    "queue_throughput": queue_throughput,
    "hotlist": hotlist,
    "mqtt_drain": mqtt_drain,
    "soak": soak,
    "fleet": fleet,
}


def summary(names: list[str]) -> None:
    """Every row with a target, from the results just written."""
    rows = []
    for name in names:
        document = json.loads((RESULTS / f"{name}.json").read_text())
        for row in document["rows"]:
            if row.get("target"):
                figure = row.get("p50", row.get("value"))
                rows.append(
                    {
                        "benchmark": name,
                        "figure": " / ".join(str(row[k]) for k in ("variant", "metric") if row.get(k)),
                        "value": figure,
                        "unit": row.get("unit"),
                        "target": row["target"],
                        "meets": row.get("meets"),
                    }
                )
    if rows:
        write("summary", rows, notes="targets are reported, not asserted; value = p50 where a distribution exists")


def main(argv: list[str]) -> int:
    configure_logging("warning")
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    failed: list[str] = []
    for name in names:
        began = time.monotonic()
        try:
            BENCHMARKS[name].run()
        except Exception as error:  # noqa: BLE001 - one benchmark that cannot finish does not hide the others
            print(f"({name} failed: {type(error).__name__}: {error})", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        print(f"({name}: {time.monotonic() - began:.0f} s)", flush=True)
    summary([name for name in names if name not in failed])
    print(f"\n(all benchmarks: {time.monotonic() - started:.0f} s)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
