"""Shared output of the benchmarks: one JSON file per benchmark and a printed table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """Median, p99, mean and max of samples (same unit in, same unit out)."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": p99,
        "mean": statistics.fmean(ordered),
        "max": ordered[-1],
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1_5_15": [round(load, 2) for load in os.getloadavg()],
    }


def write(name: str, rows: list[dict[str, Any]], notes: str = "") -> Path:
    """Save `rows` as bench/results/<name>.json and print them as a table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "notes": notes,
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(table(name, rows, path))
    if notes:
        print(f"notes: {notes}")
    return path


def table(name: str, rows: list[dict[str, Any]], path: Path | None = None) -> str:
    """The rows as an aligned text table (the union of their keys, in first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(_fmt(row.get(c))) for row in rows)) for c in columns}
    lines = [f"\n== {name} ==" + (f"  ({path})" if path else "")]
    lines.append("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    lines += ["  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns).rstrip() for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None else str(value)
