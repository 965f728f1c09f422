"""Crash safety: a process enqueuing at full speed, with an uplink draining, is SIGKILLed 50 times.

Every tap the child reported enqueued must be in the queue or already at the back office;
after the last run drains the queue, the back office holds each of them exactly once (after
deduplication), and nothing else but, at most, the one tap per run that was committed but
not yet reported when the kill came.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from reader.uplink.http_uplink import HttpUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import HttpUplinkSettings, QueueSettings
from tests.support.backoffice import BackOfficeServer
from tests.support.taps import tap_id
from tests.support.waiting import wait_until
from tests.uplink.conftest import FAST_BACKOFF, TERMINAL

REPO = Path(__file__).resolve().parents[2]
KILLS = 50


class Zygote:
    """The forking helper process (tests/uplink/crash_child.py)."""

    def __init__(self, queue_file: Path, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.uplink.crash_child", str(queue_file), url],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


def run_and_kill(zygote: Zygote, outfile: Path, run: int, rng: random.Random) -> list[str]:
    """Fork a child, let it work for a random moment, SIGKILL it; return the ids it reported."""
    answer = zygote.ask(f"run {run} {outfile}")
    assert answer.startswith("ready "), answer
    pid = int(answer.split()[1])
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(pid, signal.SIGKILL)
    status = int(zygote.ask(f"wait {pid}").split()[1])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    data = outfile.read_text() if outfile.exists() else ""
    assert data.endswith("\n") or not data  # one write per line: never half a line
    return data.split()


def test_sigkill_at_random_moments_loses_no_reported_tap(state_dir: Path) -> None:
    rng = random.Random(20261123)
    queue_file = state_dir / "queue.sqlite3"
    reported: list[str] = []
    last_per_run: list[str] = []
    with BackOfficeServer() as backoffice:
        zygote = Zygote(queue_file, backoffice.url)
        try:
            for run in range(KILLS):
                ids = run_and_kill(zygote, state_dir / f"reported-{run}", run, rng)
                reported += ids
                # The one tap that may have been committed but not reported before the kill.
                last_per_run.append(tap_id(len(ids), run))
        finally:
            zygote.close()

        queue = TapQueue(QueueSettings(path=queue_file, min_free_bytes=0, integrity_check="full"))
        assert queue.moved_aside is None  # the file passed the full integrity check
        queued = {t.tap_id for t in queue.iter_taps()}
        delivered = {key[1] for key in backoffice.taps}
        missing = set(reported) - queued - delivered
        assert not missing, f"{len(missing)} reported taps lost, e.g. {sorted(missing)[:5]}"
        assert len(reported) > 1000  # the child really worked between kills

        uplink = HttpUplink(
            queue, HttpUplinkSettings(enabled=True, url=backoffice.url, batch_size=200, backoff=FAST_BACKOFF)
        )
        uplink.start()
        assert wait_until(lambda: queue.status().depth == 0, 30)
        uplink.stop()
        queue.close()

        at_backoffice = [key[1] for key in backoffice.taps]
        assert all(key[0] == TERMINAL for key in backoffice.taps)
        assert len(at_backoffice) == len(set(at_backoffice))
        assert set(reported) <= set(at_backoffice)
        extra = set(at_backoffice) - set(reported)
        assert extra <= set(last_per_run), f"unexpected taps at the back office: {sorted(extra)[:5]}"
        print(
            f"\n{len(reported)} taps reported over {KILLS} kills, {len(extra)} committed unreported,"
            f" {backoffice.duplicates} duplicate deliveries absorbed"
        )
