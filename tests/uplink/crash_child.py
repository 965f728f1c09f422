"""Process side of the crash test: a single-threaded "zygote" that forks tap-enqueuing children.

    python -m tests.uplink.crash_child QUEUE_FILE BACKOFFICE_URL

Importing the project costs more than half a second per interpreter on a busy machine; the
zygote imports once and forks a fresh child per run, so fifty kills stay quick. The zygote
never opens the queue: each child opens its own connections after the fork, as a
restarted daemon would.

Commands on stdin, answers on stdout, one line each:
    run RUN OUTFILE  -> "ready PID" once the child has opened the queue and started its uplink;
                        the child then enqueues taps as fast as it can and appends each tap id
                        to OUTFILE after enqueue returned (one write per line)
    wait PID         -> "exit STATUS" (the raw wait status) once the child is gone
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from reader.log import configure_logging
from reader.uplink.http_uplink import HttpUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import BackoffSettings, HttpUplinkSettings, QueueSettings
from tests.support.taps import tap_record


def child(queue_file: Path, url: str, run: int, outfile: str) -> None:
    """Enqueue forever; only a signal ends this."""
    out = os.open(outfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    queue = TapQueue(QueueSettings(path=queue_file, min_free_bytes=0))
    if queue.moved_aside is not None:
        os.write(2, f"corrupt queue moved aside: {queue.moved_aside}\n".encode())
        os._exit(3)
    uplink = HttpUplink(
        queue,
        HttpUplinkSettings(
            enabled=True,
            url=url,
            batch_size=100,
            connect_timeout_s=1.0,
            read_timeout_s=2.0,
            backoff=BackoffSettings(initial_s=0.02, max_s=0.1),
            idle_poll_s=0.05,
        ),
    )
    uplink.start()
    os.write(1, f"ready {os.getpid()}\n".encode())
    n = 0
    while True:
        record = tap_record(n, run=run)
        queue.enqueue(record)
        os.write(out, (record["tap_id"] + "\n").encode())
        n += 1


def main() -> int:
    queue_file, url = Path(sys.argv[1]), sys.argv[2]
    configure_logging("error")
    for line in sys.stdin:
        command = line.split()
        if command[0] == "run":
            pid = os.fork()
            if pid == 0:
                try:
                    child(queue_file, url, int(command[1]), command[2])
                finally:
                    os._exit(4)
        elif command[0] == "wait":
            _, status = os.waitpid(int(command[1]), 0)
            sys.stdout.write(f"exit {status}\n")
            sys.stdout.flush()
        else:
            sys.stdout.write(f"error unknown command {command[0]}\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
