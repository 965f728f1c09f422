"""sd_notify: tell systemd that the daemon is ready, what it is doing, and that it is alive.

The protocol is one datagram of newline-separated ``KEY=VALUE`` assignments sent to the
AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). The
manager learns the sender's PID from the kernel (SCM_CREDENTIALS), which is how
``NotifyAccess=main`` tells the main process from its children. That is a few lines of
socket code, so there is no dependency for it: libsystemd would pull a C library into the
daemon for a single sendto, and the pure-Python `sdnotify` package hides every error.

Errors are raised, not hidden: a watchdog ping that cannot be delivered means systemd will
kill the daemon, and the log should say why beforehand. Without ``$NOTIFY_SOCKET`` (run by
hand, in tests, under another supervisor) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


class NotifyError(Exception):
    """A notification could not be delivered, or the manager's environment is malformed."""


def _socket_address(address: str) -> str:
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    raise NotifyError(f"{NOTIFY_SOCKET_ENV}={address!r}: only a path or an @abstract name is supported")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()).strip()


class SystemdNotifier:
    """Sends notifications to one manager socket; disabled when there is none."""

    def __init__(self, address: str | None) -> None:
        """`address` is the value of $NOTIFY_SOCKET, or None for a notifier that does nothing."""
        self._address = _socket_address(address) if address else None
        self._display_address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier for the manager that started this process, if any."""
        env = os.environ if environ is None else environ
        return cls(env.get(NOTIFY_SOCKET_ENV) or None)

    @property
    def enabled(self) -> bool:
        """Whether a manager is listening (False: every call is a no-op)."""
        return self._address is not None

    def notify(self, *assignments: str) -> None:
        """Send `KEY=VALUE` assignments in one datagram."""
        if self._address is None:
            return
        for assignment in assignments:
            key, sep, _ = assignment.partition("=")
            if not sep or not key or "\n" in assignment:
                raise ValueError(f"not a single-line KEY=VALUE assignment: {assignment!r}")
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sent = sock.sendto(message, self._address)
        except OSError as exc:
            raise NotifyError(f"cannot notify {self._display_address}: {exc}") from exc
        if sent != len(message):
            raise NotifyError(f"short notification to {self._display_address}: {sent} of {len(message)} bytes")

    def ready(self, status: str | None = None) -> None:
        """Start-up is complete (readers open, queue checked): systemd marks the unit active."""
        if status is None:
            self.notify("READY=1")
        else:
            self.notify("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """A one-line summary shown by `systemctl status`."""
        self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """The daemon is alive; must come more often than WatchdogSec= or systemd aborts it."""
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        """A reload (SIGHUP) has begun; send `ready()` when it is done."""
        self.notify("RELOADING=1")

    def stopping(self) -> None:
        """Shutdown has begun (the tap in progress is being finished)."""
        self.notify("STOPPING=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """WatchdogSec= in seconds if the watchdog is meant for this process, else None.

    systemd sets WATCHDOG_PID alongside WATCHDOG_USEC; a PID other than ours means the
    variables were inherited from a parent and the watchdog is not ours to feed. Ping at
    half the interval or more often.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get(WATCHDOG_USEC_ENV)
    if not usec_text:
        return None
    pid_text = env.get(WATCHDOG_PID_ENV)
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError as exc:
            raise NotifyError(f"{WATCHDOG_PID_ENV}={pid_text!r} is not a process id") from exc
        if pid != os.getpid():
            return None
    try:
        usec = int(usec_text)
    except ValueError as exc:
        raise NotifyError(f"{WATCHDOG_USEC_ENV}={usec_text!r} is not a number of microseconds") from exc
    if usec <= 0:
        raise NotifyError(f"{WATCHDOG_USEC_ENV}={usec_text!r} must be positive")
    return usec / 1_000_000
