"""`make crashtest`: the whole crash-point and fault matrix, then taps under random SIGKILLs.

Every command of a bus tap (traced on the bench, card and PSAM) meets every fault kind of
sscard_sim/faults.py, each case once with the card coming back and once with the card gone
past the tearing window; every crash point of the pipeline, and the named cases (a clone's
MAC1, the overdraft, a full disk) likewise. Then `--kills` taps in a loop, the daemon
SIGKILLed at a random moment of each and restarted, bounded by `--kill-budget` seconds.
The judge is tests/daemon/matrix.py; the details (every failed case with its records and
violations) go to bench/results/crashtest.json, and one line is printed:

    crashtest: P points x F faults = N cases, R runs judged, V violations, L lost, D double, C crash loops

P x F = N is the matrix proper (commands x fault kinds); V, L, D and C count over
everything that ran: both endings of every case, the crash points, the named cases and the
random kills. The exit status is 1 when anything was found. It needs the bench's pcscd with
vpcd and takes long (about an hour for the whole of it): it is not part of `make test`.

    python -m bench.crashtest                      # everything
    python -m bench.crashtest --kills 50 --only-crash-points
    python -m bench.crashtest --kills 0 --shard 1/2   # half the matrix; 2/2 in another namespace
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.report import RESULTS
from reader.log import configure_logging
from sscard_sim.pcscd import PcscdBench
from tests.daemon import matrix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crashtest", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000, help="random SIGKILLs during taps (default 1000)")
    parser.add_argument("--kill-budget", type=float, default=3600.0, help="seconds the random kills may take")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: random)")
    parser.add_argument("--only-crash-points", action="store_true", help="crash points and named cases only")
    parser.add_argument("--cases", nargs="*", default=None, help="run only these case ids")
    parser.add_argument("--shard", default="1/1", help="K/N: run every N-th case from the K-th (parallel runs)")
    parser.add_argument("--verbose", action="store_true", help="each failed case on stderr as it is found")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the cases' files here")
    parser.add_argument("--out", type=Path, default=RESULTS / "crashtest.json", help="where the details go")
    args = parser.parse_args(argv)
    configure_logging(level="error")
    started = time.monotonic()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="sscard-crashtest-"))
    root.mkdir(parents=True, exist_ok=True)
    bench = PcscdBench(log_file=root / "pcscd.log")
    bench.start()
    verdicts: list[matrix.Verdict] = []
    kills: matrix.KillRun | None = None
    card_points: list[matrix.Point] = []
    psam_points: list[matrix.Point] = []
    try:
        with matrix.psam_in_slot(root) as psam:
            card_points, psam_points = matrix.trace_clean_tap(root, psam)
            cases = matrix.all_cases(card_points, psam_points)
            if args.only_crash_points:
                cases = [
                    c for c in cases if not c.name.startswith(("card-", "psam-")) or c.name.startswith("card-debit-")
                ]
            if args.cases is not None:
                cases = [case for case in cases if case.id in set(args.cases)]
            shard, shards = (int(part) for part in args.shard.split("/"))
            cases = cases[shard - 1 :: shards]
            runner = matrix.Runner(root, psam)
            for case in cases:
                verdict = runner.run(case)
                verdicts.append(verdict)
                if args.verbose and not verdict.ok:
                    print(verdict.summary(), file=sys.stderr)
            if args.kills > 0:
                kills = matrix.random_kills(root, psam, args.kills, args.kill_budget, args.seed)
                verdicts.append(kills.verdict)
                if args.verbose and not kills.verdict.ok:
                    print(kills.verdict.summary(), file=sys.stderr)
    finally:
        bench.stop()
    points = len(card_points) + len(psam_points)
    line = matrix.count_summary(verdicts, points, len(matrix.FAULT_KINDS))
    if kills is not None:
        line += f"; {kills.kills} random kills ({kills.mid_tap} during a tap) over {kills.taps} taps"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "summary": line,
        "seconds": round(time.monotonic() - started, 1),
        "cases_run": len(verdicts),
        "ambiguous": sum(v.ambiguous for v in verdicts),
        "random_kills": None if kills is None else {"kills": kills.kills, "mid_tap": kills.mid_tap, "taps": kills.taps},
        "failed": [
            {**asdict(v), "records": [{k: r.get(k) for k in ("result", "reason", "atc", "fare")} for r in v.records]}
            for v in verdicts
            if not v.ok
        ],
    }
    args.out.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    print(line)
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
