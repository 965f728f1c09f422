"""The mutation score of `make mutation`, per module and overall, from mutmut's result files.

mutmut keeps one `mutants/<path>.meta` JSON file per mutated source file, with an exit code
per mutant; this reads them (after `mutmut run`) so the score needs no scraping of mutmut's
progress output. A mutant counts as killed when a test failed (exit 1 or 3) or it ran out of
time (an endless loop is caught, too); every other mutant is listed, with its status.

    python -m tests.mutation_score [--list]
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED = {1: "killed", 3: "killed", 24: "timeout", -24: "timeout", 152: "timeout", 36: "timeout", 255: "timeout"}
OTHER = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 37: "type check", -9: "segfault", -11: "segfault"}


def status(code: int | None) -> str:
    """mutmut's name for an exit code (its stats.py table)."""
    if code is None:
        return "not checked"
    return KILLED.get(code) or OTHER.get(code, "suspicious")


def modules() -> list[str]:
    """The files `make mutation` mutates, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names: list[str] = config["tool"]["mutmut"]["only_mutate"]
    return names


def main(argv: list[str]) -> int:
    show_all = "--list" in argv
    total: Counter[str] = Counter()
    left: list[tuple[str, str]] = []
    print(f"{'module':32} {'mutants':>7} {'killed':>7} {'score':>7}")
    for module in modules():
        meta = ROOT / "mutants" / (module + ".meta")
        if not meta.exists():
            print(f"{module:32} {'-':>7}  (not run)")
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        counts = Counter(status(code) for code in codes.values())
        killed = counts["killed"] + counts["timeout"]
        score = 100.0 * killed / len(codes) if codes else 100.0
        print(f"{module:32} {len(codes):7d} {killed:7d} {score:6.1f}%")
        total.update(counts)
        left += sorted((name, status(code)) for name, code in codes.items() if code not in KILLED)
    mutants = sum(total.values())
    killed = total["killed"] + total["timeout"]
    print(f"{'overall':32} {mutants:7d} {killed:7d} {100.0 * killed / max(mutants, 1):6.1f}%")
    print("by status: " + ", ".join(f"{name} {count}" for name, count in sorted(total.items())))
    if show_all:
        for name, state in left:
            print(f"  {state:12} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
