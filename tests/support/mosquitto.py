"""A real Mosquitto broker on loopback with its own configuration, data folder, users and ACL.

    broker = MosquittoBroker(workdir, users={"VAL-1": "pw"}, acl=ACL_TEXT, pki=pki)
    broker.start()          # plain listener on broker.port, mutual-TLS listener on broker.tls_port
    broker.stop(); broker.start()   # same ports, same data folder: persistence is exercised
    broker.close()

Ports are picked free at construction and kept across restarts. Started as root, Mosquitto
would switch to the `mosquitto` user and then fail to read the files made here, so the
configuration says `user root` in that case. Log goes to `<workdir>/broker.log` (a file,
not stdout, so nothing is lost in a pipe buffer on kill -9).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from tests.support.pki import Pki

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


class BrokerError(RuntimeError):
    """The broker did not start or stop as asked."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MosquittoBroker:
    """One Mosquitto process (restartable) with a plain and, given a Pki, a mutual-TLS listener."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        pki: Pki | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls_port: int | None = None,
        extra_config: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port(host)
        self.tls_port = (tls_port or free_port(host)) if pki is not None else None
        self._users = dict(users or {})
        self._acl = acl
        self._pki = pki
        self._extra = extra_config
        self._proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "broker.log"
        self._write_config()

    # -- files ---------------------------------------------------------------------------

    def _write_config(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 60",
            "max_queued_messages 1000000",
            "max_inflight_messages 20",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        auth: list[str] = []
        if self._users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for name, password in self._users.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(passwd), name, password],
                    check=True,
                    capture_output=True,
                )
            auth += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            auth.append("allow_anonymous true")
        acl_lines: list[str] = []
        if self._acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self._acl.strip() + "\n")
            acl_lines.append(f"acl_file {acl_file}")
        lines += [f"listener {self.port} {self.host}", *auth, *acl_lines]
        if self._pki is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                "allow_anonymous false",
                f"cafile {self._pki.ca_cert}",
                f"certfile {self._pki.server_cert}",
                f"keyfile {self._pki.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
                *acl_lines,
            ]
        if self._extra:
            lines.append(self._extra)
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- process -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the broker process exists."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until every listener accepts connections."""
        if self.running:
            raise BrokerError("broker already running")
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        deadline = time.monotonic() + timeout
        for port in ports:
            while not _accepts(self.host, port):
                if self._proc.poll() is not None:
                    raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
                if time.monotonic() > deadline:
                    self.kill()
                    raise BrokerError(f"mosquitto not listening on {port}: {self.log_tail()}")
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the broker saves its persistence file) and wait."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: no persistence save."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, pause_s: float = 0.0) -> None:
        """Stop, stay down for `pause_s`, start again on the same ports."""
        self.stop()
        time.sleep(pause_s)
        self.start()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise BrokerError(f"mosquitto ignored {sig.name} for {timeout} s") from exc

    def close(self) -> None:
        """Stop the broker if it runs."""
        if self.running:
            self.stop()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the broker log, for error messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
