"""A private pcscd for tests, the demo and benchmarks, with the vpcd virtual readers.

pcscd is started in the foreground and never with --auto-exit (it would quit 60 s after
the last client left, in the middle of a test run). When a pcscd that we did not start is
already serving the socket, it is used as it is and left alone at the end: a developer's
or a terminal's own pcscd is not ours to stop.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from reader.backends.base import ReaderError, ReaderUnavailable
from reader.backends.pcsc import reader_states
from reader.log import get_logger

VPCD_READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")
VPCD_PORTS = {VPCD_READERS[0]: 35963, VPCD_READERS[1]: 35964}

log = get_logger(component="pcscd-bench")


class PcscdUnavailable(RuntimeError):
    """pcscd could not be started, or its virtual readers never appeared."""


def socket_path() -> Path:
    """Where pcscd listens: the client library honours PCSCLITE_CSOCK_NAME, so do we."""
    return Path(os.environ.get("PCSCLITE_CSOCK_NAME", "/run/pcscd/pcscd.comm"))


def pcscd_is_serving() -> bool:
    """True when a pcscd accepts connections on the client socket (a stale file is not enough)."""
    path = socket_path()
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _reader_names() -> set[str]:
    """Reader names as PC/SC reports them; none while pcscd is not there (yet)."""
    try:
        return {state.name for state in reader_states()}
    except ReaderError:
        return set()


@dataclass
class PcscdBench:
    """Start (or reuse) pcscd and wait until both vpcd readers are listed."""

    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def owned(self) -> bool:
        """Whether this bench started the pcscd it uses (and so will stop it)."""
        return self.process is not None

    def start(self, timeout: float = 15.0) -> None:
        """Make sure a pcscd with the vpcd readers is serving; start one when none is."""
        if not pcscd_is_serving():
            executable = shutil.which("pcscd") or "/usr/sbin/pcscd"
            if not Path(executable).exists():
                raise PcscdUnavailable("pcscd is not installed (Debian package 'pcscd')")
            socket_path().parent.mkdir(parents=True, exist_ok=True)
            sink = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
            self.process = subprocess.Popen([executable, "--foreground"], stdout=sink, stderr=sink)
            log.info("pcscd_started", pid=self.process.pid)
        else:
            log.info("pcscd_reused")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise PcscdUnavailable(f"pcscd exited with status {self.process.returncode}")
            if set(VPCD_READERS) <= _reader_names():
                return
            time.sleep(0.05)
        self.stop()
        raise PcscdUnavailable(
            f"the vpcd readers {VPCD_READERS} did not appear within {timeout} s "
            "(is the Debian package 'vsmartcard-vpcd' installed?)"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the pcscd this bench started, and only that one."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        log.info("pcscd_stopped", pid=self.process.pid, status=self.process.returncode)
        self.process = None

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop our pcscd and start a new one (fault tests: clients must recover)."""
        if self.process is None:
            raise PcscdUnavailable("cannot restart a pcscd this bench did not start")
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def __enter__(self) -> PcscdBench:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_presence(reader: str, present: bool, timeout: float = 3.0) -> bool:
    """Block until pcscd reports `reader` with (or without) a card; False on timeout.

    The bench, the demo and the tests insert virtual cards and must not race pcscd's 400 ms
    presence poll.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = {state.name: state for state in reader_states()}
        except ReaderUnavailable:
            states = {}
        if reader in states and states[reader].present == present:
            return True
        time.sleep(0.02)
    return False
