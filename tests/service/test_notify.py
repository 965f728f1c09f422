"""sd_notify against a stand-in manager socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.service.notify import NotifyError, SystemdNotifier, watchdog_interval

_UCRED = struct.Struct("iII")  # pid, uid, gid


class Manager:
    """The manager's end of $NOTIFY_SOCKET: a datagram socket that asks for sender credentials."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(5.0)

    def receive(self) -> tuple[str, int]:
        """One notification and the PID the kernel vouches for."""
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pids = [
            _UCRED.unpack(payload[: _UCRED.size])[0]
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        ]
        assert len(pids) == 1, "no sender credentials attached"
        return data.decode(), pids[0]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    stand_in = Manager(str(tmp_path / "notify"))
    yield stand_in
    stand_in.close()


def test_daemon_lifecycle_from_child_process(manager: Manager) -> None:
    script = textwrap.dedent(
        """
        from reader.service.notify import SystemdNotifier, watchdog_interval
        notifier = SystemdNotifier.from_environment()
        assert notifier.enabled
        assert watchdog_interval() == 0.4
        notifier.ready("readers open\\nqueue checked")
        for _ in range(3):
            notifier.watchdog()
        notifier.status("2 readers, 0 queued")
        notifier.reloading()
        notifier.stopping()
        """
    )
    env = dict(os.environ, NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    with subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE) as child:
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr.decode()
    messages = [manager.receive() for _ in range(7)]
    assert [text for text, _ in messages] == [
        "READY=1\nSTATUS=readers open queue checked",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STATUS=2 readers, 0 queued",
        "RELOADING=1",
        "STOPPING=1",
    ]
    # NotifyAccess=main works because the kernel names the sender: the daemon's own PID.
    assert {pid for _, pid in messages} == {child.pid}


def test_abstract_socket() -> None:
    stand_in = Manager(f"@sscard-test-{uuid.uuid4().hex}")
    try:
        notifier = SystemdNotifier(stand_in.address)
        notifier.ready()
        assert stand_in.receive() == ("READY=1", os.getpid())
    finally:
        stand_in.close()


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()


def test_missing_manager_socket_is_an_error(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone"))
    with pytest.raises(NotifyError, match="cannot notify"):
        notifier.watchdog()


def test_unsupported_address_is_an_error() -> None:
    with pytest.raises(NotifyError, match="only a path or an @abstract name"):
        SystemdNotifier("vsock:2:1234")


def test_malformed_assignment_is_refused(manager: Manager) -> None:
    notifier = SystemdNotifier(manager.address)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notifier.notify("READY")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notifier.notify("STATUS=a\nREADY=1")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


@pytest.mark.parametrize(
    "environ",
    [{"WATCHDOG_USEC": "thirty"}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"}],
)
def test_malformed_watchdog_environment_is_an_error(environ: dict[str, str]) -> None:
    with pytest.raises(NotifyError):
        watchdog_interval(environ)
