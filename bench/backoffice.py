"""The loopback back office in a process of its own, counting taps rather than keeping them.

The drain benchmark must not share its interpreter (and its GIL) with the server it sends
to, and a million kept records would weigh on the server's memory, so the test suite's
`BackOfficeServer` runs here as a child with a counting store. The child prints its URL,
answers a `stats` line on stdin with one JSON line, and stops when stdin closes:

    with BackOfficeProcess() as server:
        ... POST to server.url ...
        server.stats()     # {"received": ..., "distinct": ..., "requests": ..., "errors": ...}
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.backoffice import BackOfficeServer, Record

ROOT = Path(__file__).resolve().parents[1]


class CountingBackOffice(BackOfficeServer):
    """Accepts and deduplicates by tap id like the test server, but keeps only the ids.

    The answers are the test server's, `{"accepted": [tap_id, ...], "new": n}`, so the
    benchmark measures the uplink checking its acknowledgements as it does in service.
    """

    def __init__(self) -> None:
        super().__init__()
        self.distinct: set[tuple[str, str]] = set()

    def _store(self, taps: list[Record]) -> int:
        with self._changed:
            before = len(self.distinct)
            for record in taps:
                self.received += 1
                self.distinct.add((str(record["terminal_id"]), str(record["tap_id"])))
            self._changed.notify_all()
            return len(self.distinct) - before

    def stats(self) -> dict[str, Any]:
        with self._lock:
            statuses = [entry.status for entry in self.requests]
            return {
                "received": self.received,
                "distinct": len(self.distinct),
                "requests": len(statuses),
                "errors": sum(status != 200 for status in statuses) + len(self.handler_errors),
            }


class BackOfficeProcess:
    """Start the child, learn its URL, ask for its counts, stop it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.backoffice"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.url = json.loads(self._process.stdout.readline())["url"]

    def stats(self) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write("stats\n")
        process.stdin.flush()
        answer: dict[str, Any] = json.loads(process.stdout.readline())
        return answer

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> BackOfficeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    server = CountingBackOffice()
    server.start()
    print(json.dumps({"url": server.url}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(server.stats()), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
