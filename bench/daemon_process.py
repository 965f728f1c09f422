"""`sscard run --config` as a child process, watched the way systemd watches it.

The benchmark binds its own AF_UNIX datagram socket and passes it as $NOTIFY_SOCKET, so
READY=1 arrives exactly as it would to systemd (Type=notify). The process's CPU time, RSS
and wake-ups come from /proc, so nothing in the daemon is instrumented for these figures.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.toml"
SSCARD = Path(sys.executable).with_name("sscard")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class DaemonFailed(RuntimeError):
    """The daemon exited, or did not report READY=1 in time."""


def write_config(
    workdir: Path,
    *,
    queue_path: Path | None = None,
    http_url: str | None = None,
    max_taps: int | None = None,
    max_bytes: int | None = None,
) -> Path:
    """config/demo.toml with its state in `workdir`, a fresh token key, and the given queue and uplink.

    The demo's own [uplink.*] tables (its embedded back office) are left out, and [queue] and
    [uplink.http] appended as given; the key and the state folder replace the demo's placeholders.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "token.key"
    key.write_text(secrets.token_hex(32))
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    lines = []
    in_uplink = False
    for line in text.splitlines():
        if line.startswith("["):
            in_uplink = line.startswith("[uplink")
        if in_uplink:
            continue
        if line.startswith("token_key"):
            lines.append(f'token_key = "file:{key}"\nstate_dir = "{workdir / "state"}"')
        else:
            lines.append(line)
    queue = {"path": queue_path, "max_taps": max_taps, "max_bytes": max_bytes}
    if any(value is not None for value in queue.values()):
        lines.append("\n[queue]")
        lines += [f"{k} = {_toml(v)}" for k, v in queue.items() if v is not None]
    if http_url is not None:
        lines += ["\n[uplink.http]", "enabled = true", f"url = {_toml(http_url)}"]
    path = workdir / "sscard.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: object) -> str:
    if isinstance(value, Path | str):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds (user + system, every thread) and voluntary context switches at one instant."""

    at: float
    cpu_s: float
    wakeups: int


class DaemonProcess:
    """One `sscard run` child with a notify socket of our own."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.socket_path = workdir / "notify.sock"
        self.log_path = workdir / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.messages: list[tuple[float, str]] = []
        self._ready_at: float | None = None
        self._received = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise DaemonFailed("the daemon is not running")
        return self.process.pid

    def start(self, timeout: float = 120.0) -> float:
        """Start the daemon; seconds from just before the fork to the READY=1 datagram."""
        self.socket_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.socket_path))
        self._sock = sock
        env = {**os.environ, "NOTIFY_SOCKET": str(self.socket_path)}
        env.pop("WATCHDOG_USEC", None)
        log = self.log_path.open("ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(SSCARD), "run", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        self._reader = threading.Thread(target=self._receive, args=(sock,), name="notify-socket", daemon=True)
        self._reader.start()
        deadline = started + timeout
        with self._received:
            while self._ready_at is None:
                left = deadline - time.perf_counter()
                if left <= 0:
                    self.stop()
                    raise DaemonFailed(f"no READY=1 within {timeout} s; see {self.log_path}")
                if self.process.poll() is not None:
                    raise DaemonFailed(f"the daemon exited with {self.process.returncode}; see {self.log_path}")
                self._received.wait(min(left, 0.5))
            return self._ready_at - started

    def _receive(self, sock: socket.socket) -> None:
        """Read every notification as systemd does: a full datagram queue would block the sender."""
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            if not data:
                return  # shut down by stop()
            at = time.perf_counter()
            message = data.decode()
            with self._received:
                self.messages.append((at, message))
                if self._ready_at is None and "READY=1" in message.splitlines():
                    self._ready_at = at
                self._received.notify_all()

    def stop(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM and wait; the exit status and the seconds it took."""
        process, sock, reader = self.process, self._sock, self._reader
        self.process, self._sock, self._reader = None, None, None
        if process is None:
            return 0, 0.0
        started = time.perf_counter()
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)  # only now: the daemon notifies STOPPING=1 on its way out
                sock.close()
            if reader is not None:
                reader.join(5)
        return process.returncode, time.perf_counter() - started

    def cpu(self) -> CpuSample:
        """The process's CPU time so far (/proc/PID/stat) and its threads' voluntary switches."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        wakeups = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                status = (task / "status").read_text()
            except FileNotFoundError:
                continue
            wakeups += _status_field(status, "voluntary_ctxt_switches")
        return CpuSample(time.perf_counter(), cpu_s, wakeups)

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return _status_field(status, "VmRSS"), _status_field(status, "VmHWM")

    def threads(self) -> int:
        return len(list(Path(f"/proc/{self.pid}/task").iterdir()))


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of any process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_field(status: str, name: str) -> int:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise DaemonFailed(f"/proc status has no {name}")
