"""Pseudo-terminal stand-ins for USB-serial peripherals.

A peripheral is a pty pair: the code under test opens the slave through a symlink (the
udev-style device path from the configuration), the test holds the master and sees every
byte. Unplugging closes the master (the slave then fails with EIO, as a vanished
USB-serial adapter does) and removes the symlink; re-plugging creates a new pair behind the
same path.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

WAIT = 5.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.01)
    return True


class PtyDevice:
    """A re-pluggable pty behind a stable device path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master: int | None = None
        self.slave_name = ""

    def plug(self) -> None:
        master, slave = os.openpty()
        self.slave_name = os.ttyname(slave)
        os.close(slave)
        self.master = master
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.symlink_to(self.slave_name)
        os.replace(tmp, self.path)

    def unplug(self) -> None:
        if self.path.is_symlink():
            self.path.unlink()
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def read_exact(self, n: int, timeout: float = WAIT) -> bytes:
        """Read exactly `n` bytes from the master, failing the test if they do not come."""
        assert self.master is not None
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"expected {n} bytes from {self.path}, got {data.hex(' ')}")
            data += os.read(self.master, n - len(data))
        return data

    def pending_on_slave(self) -> int:
        """Bytes waiting in the slave's input queue (what the code under test has not read yet)."""
        fd = os.open(self.slave_name, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            raw = fcntl.ioctl(fd, termios.FIONREAD, struct.pack("i", 0))
        finally:
            os.close(fd)
        count: int = struct.unpack("i", raw)[0]
        return count


class DisplaySim:
    """The display's side of the line protocol on a pty master: records commands, answers them.

    `script` holds answers for the next commands in order (bytes to send, or None to stay
    silent); once it is empty every command is answered `OK`.
    """

    def __init__(self, device: PtyDevice) -> None:
        assert device.master is not None
        self._fd = device.master
        self.received: list[bytes] = []
        self.script: list[bytes | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def send_raw(self, data: bytes) -> None:
        os.write(self._fd, data)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT)

    def _serve(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self._fd, 1024)
            except OSError:
                # EIO while no process has the slave open (before the code under test
                # opens it, or between its reopen attempts): wait for it to come back.
                self._stop.wait(0.01)
                continue
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.received.append(line + b"\n")
                answer = self.script.pop(0) if self.script else b"OK\n"
                if answer is not None:
                    os.write(self._fd, answer)
