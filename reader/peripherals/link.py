"""A serial port that survives being unplugged and plugged back in.

USB-serial adapters vanish when a cable is knocked loose and come back, often at the same
path (a udev symlink), often within seconds. pyserial reports a vanished device as a
`SerialException` on the next read or write and never recovers by itself, so this link:

- opens the port exclusively (a second daemon on the same relay is an error, not a race);
- on a failed exchange drops the port, tries one immediate reopen and replays the exchange
  once, so a device re-plugged between two commands costs nothing;
- otherwise raises `PeripheralUnavailable` (the command is never silently dropped) and
  reopens in a background thread with exponential backoff, so the device is back in
  service, and its owner can restore its state, before the next command arrives.

Every successful open bumps `generation`; owners compare it to decide when the device has
lost its state (a re-plugged relay is off, a re-plugged display is blank) and must be told
again.
"""

from __future__ import annotations

import termios
import threading
from collections.abc import Callable
from typing import TypeVar

import serial

from reader.backoff import Backoff
from reader.log import get_logger
from reader.peripherals.errors import PeripheralError, PeripheralUnavailable

T = TypeVar("T")

# What a vanished or broken device raises: pyserial wraps most errno failures in
# SerialException (write timeouts included), a few calls surface the raw OSError, and the
# termios calls (flushing the buffers, reading the line state) raise termios.error, which
# is not an OSError.
_LINK_ERRORS = (serial.SerialException, OSError, termios.error)


class SerialLink:
    """One serial device, reopened after an unplug; exchanges are serialised by a lock."""

    def __init__(
        self,
        device: str,
        *,
        name: str,
        baudrate: int,
        timeout: float = 0.5,
        write_timeout: float = 1.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        on_reopen: Callable[[], None] | None = None,
    ) -> None:
        """`on_reopen` runs in the reconnect thread, without the link lock, after a background reopen.

        It is where the owner restores the device's state; a PeripheralError it raises is logged.
        """
        self._device = device
        self._name = name
        self._baudrate = baudrate
        self._timeout = timeout
        self._write_timeout = write_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_reopen = on_reopen
        self._lock = threading.Lock()
        self._port: serial.Serial | None = None
        self._generation = 0
        self._closed = False
        self._reconnecting = False
        self._reconnector: threading.Thread | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._log = get_logger(peripheral=name, device=device)

    @property
    def name(self) -> str:
        return self._name

    @property
    def device(self) -> str:
        return self._device

    @property
    def connected(self) -> bool:
        """Whether the port is open right now (an unplug is only noticed on the next exchange)."""
        return self._connected.is_set()

    @property
    def generation(self) -> int:
        """How many times the port has been opened; a change means the device may have lost its state."""
        return self._generation

    def start(self) -> bool:
        """Open the port now if possible, else keep trying in the background; return whether it is open.

        A terminal must boot even when a peripheral is missing or late (USB enumeration after
        the daemon starts), so absence here is a state, not an exception.
        """
        with self._lock:
            if self._closed:
                raise PeripheralUnavailable(self._name, "link is closed")
            if self._port is not None:
                return True
            try:
                self._open_locked()
            except PeripheralUnavailable as exc:
                self._log.warning("peripheral.absent", error=str(exc))
                self._start_reconnect_locked()
                return False
            return True

    def wait_connected(self, timeout: float) -> bool:
        """Block until the port is open or `timeout` seconds pass; return whether it is open."""
        return self._connected.wait(timeout)

    def run(self, exchange: Callable[[serial.Serial], T]) -> T:
        """Run one exchange (writes and reads on the open port) and return its result.

        If the exchange fails because the link broke, the port is reopened at once and the
        exchange replayed once, so exchanges must be safe to repeat (set a state, show a line).
        Raises PeripheralUnavailable when the device cannot be reached.
        """
        with self._lock:
            if self._closed:
                raise PeripheralUnavailable(self._name, "link is closed")
            if self._port is None:
                self._reopen_or_raise_locked(None)
            try:
                return exchange(self._port)
            except _LINK_ERRORS as first:
                self._drop_locked(first)
                self._reopen_or_raise_locked(first)
                try:
                    return exchange(self._port)
                except _LINK_ERRORS as second:
                    self._drop_locked(second)
                    raise PeripheralUnavailable(self._name, f"link lost: {second}") from second

    def close(self) -> None:
        """Release the port and stop reconnecting; later exchanges raise PeripheralUnavailable."""
        with self._lock:
            self._closed = True
            self._stop.set()
            port, self._port = self._port, None
            self._connected.clear()
            reconnector = self._reconnector
        if port is not None:
            self._close_port(port)
        if reconnector is not None and reconnector is not threading.current_thread():
            reconnector.join(timeout=2.0)

    # -- internals; every *_locked method expects self._lock held -----------------------

    def _open_locked(self) -> None:
        try:
            port = serial.Serial(
                self._device,
                self._baudrate,
                timeout=self._timeout,
                write_timeout=self._write_timeout,
                exclusive=True,
            )
        except _LINK_ERRORS as exc:
            raise PeripheralUnavailable(self._name, f"cannot open {self._device}: {exc}") from exc
        self._port = port
        self._generation += 1
        self._connected.set()
        self._log.info("peripheral.opened", generation=self._generation)

    def _reopen_or_raise_locked(self, cause: BaseException | None) -> None:
        try:
            self._open_locked()
        except PeripheralUnavailable as exc:
            self._start_reconnect_locked()
            if cause is None:
                raise
            raise PeripheralUnavailable(self._name, f"link lost ({cause}) and {exc}") from cause

    def _drop_locked(self, cause: BaseException) -> None:
        port, self._port = self._port, None
        self._connected.clear()
        self._log.warning("peripheral.link_lost", error=str(cause))
        if port is not None:
            self._close_port(port)
        self._start_reconnect_locked()

    def _close_port(self, port: serial.Serial) -> None:
        try:
            port.close()
        except _LINK_ERRORS as exc:
            # Closing the descriptor of a device that is already gone can fail; the port
            # is abandoned either way, so this is worth a line in the log and nothing more.
            self._log.warning("peripheral.close_failed", error=str(exc))

    def _start_reconnect_locked(self) -> None:
        if self._closed or self._reconnecting:
            return
        self._reconnecting = True
        self._reconnector = threading.Thread(target=self._reconnect_loop, name=f"reconnect-{self._name}", daemon=True)
        self._reconnector.start()

    def _reconnect_loop(self) -> None:
        backoff = Backoff(self._backoff_initial, self._backoff_max, jitter=False)
        attempts = 0
        while not self._stop.wait(backoff.next_delay()):
            attempts += 1
            with self._lock:
                if self._closed:
                    self._reconnecting = False
                    return
                if self._port is None:
                    try:
                        self._open_locked()
                    except PeripheralUnavailable as exc:
                        self._log.debug("peripheral.reopen_failed", attempt=attempts, error=str(exc))
                        continue
                self._reconnecting = False
            self._log.info("peripheral.reconnected", attempts=attempts)
            if self._on_reopen is not None:
                try:
                    self._on_reopen()
                except PeripheralError as exc:
                    # The device vanished again while being restored; that exchange already
                    # dropped the port and started the next round of reconnecting.
                    self._log.warning("peripheral.restore_failed", error=str(exc))
            return
        with self._lock:
            self._reconnecting = False
