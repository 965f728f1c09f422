"""Gate relay on an LCUS-type USB relay board, opened in timed pulses.

Wire protocol of the LCUS-1/2/4/8 boards (a CH340 USB-serial bridge in front of a small
controller, 9600 baud 8N1): every command is four bytes and the board sends no answer.

    A0 <channel> <state> <checksum>

`channel` counts from 1, `state` is 00 (relay released) or 01 (relay energised), and
`checksum` is the sum of the first three bytes modulo 256: channel 1 on is A0 01 01 A2,
channel 1 off is A0 01 00 A1.

Because the board never answers, the only failure signal is the write itself failing, and
the board is powered by the USB port: an unplugged board has released its relay. That gives
the rules here: the gate's desired state lives on the host, a command that cannot be
written raises PeripheralUnavailable (the tap's gate did not open, and the daemon must
know), and every (re)open of the port drives the relay to the desired state again, which
also releases a relay left energised by a daemon that crashed mid-pulse.
"""

from __future__ import annotations

import math
import threading
import time

import serial

from reader.log import get_logger
from reader.peripherals.errors import PeripheralError, PeripheralUnavailable
from reader.peripherals.link import SerialLink
from reader.peripherals.settings import LCUS_BAUDRATE

_LCUS_HEADER = 0xA0


def lcus_command(channel: int, on: bool) -> bytes:
    """The four bytes that switch `channel` on or off."""
    if not 1 <= channel <= 0xFF:
        raise ValueError(f"LCUS relay channel must be 1..255, got {channel}")
    body = bytes((_LCUS_HEADER, channel, 0x01 if on else 0x00))
    return body + bytes((sum(body) & 0xFF,))


class GateRelay:
    """One relay channel driving a gate: `open(seconds)` energises it, a timer releases it."""

    def __init__(
        self,
        device: str,
        *,
        channel: int = 1,
        baudrate: int = LCUS_BAUDRATE,
        name: str = "relay",
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
    ) -> None:
        self._on_bytes = lcus_command(channel, True)
        self._off_bytes = lcus_command(channel, False)
        self._name = name
        self._link = SerialLink(
            device,
            name=name,
            baudrate=baudrate,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            on_reopen=self._restore,
        )
        # One condition guards the desired state and orders every write, so the timer's
        # "off" can never overtake an "on" from a tap that re-armed the pulse.
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._restored_generation = 0
        self._closing = False
        self._timer: threading.Thread | None = None
        self._log = get_logger(peripheral=name, device=device, channel=channel)

    @property
    def name(self) -> str:
        return self._name

    @property
    def connected(self) -> bool:
        """Whether the serial port is open (an unplug is noticed on the next write)."""
        return self._link.connected

    @property
    def is_open(self) -> bool:
        """Whether a pulse is running (the gate is meant to be open)."""
        with self._cond:
            return self._deadline is not None

    @property
    def open_until(self) -> float | None:
        """`time.monotonic()` at which the running pulse ends, or None."""
        with self._cond:
            return self._deadline

    def connect(self) -> bool:
        """Open the port (or keep trying in the background), release the relay; return whether connected."""
        with self._cond:
            if self._closing:
                raise PeripheralUnavailable(self._name, "relay is closed")
            if self._timer is None:
                self._timer = threading.Thread(target=self._run_timer, name=f"pulse-{self._name}", daemon=True)
                self._timer.start()
        if self._link.start():
            try:
                self._restore()
            except PeripheralUnavailable as exc:
                self._log.warning("relay.restore_failed", error=str(exc))
        return self._link.connected

    def wait_connected(self, timeout: float) -> bool:
        """Block until the port is open or `timeout` seconds pass."""
        return self._link.wait_connected(timeout)

    def open(self, seconds: float) -> None:
        """Energise the relay for `seconds`; a pulse already running is extended, never shortened.

        Raises PeripheralUnavailable if the command could not be written (the gate did not open).
        """
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"pulse length must be a positive number of seconds, got {seconds}")
        with self._cond:
            if self._closing:
                raise PeripheralUnavailable(self._name, "relay is closed")
            try:
                self._write(self._on_bytes)
            except PeripheralError:
                self._deadline = None
                self._cond.notify_all()
                raise
            now = time.monotonic()
            self._deadline = max(self._deadline or now, now + seconds)
            self._cond.notify_all()
            self._log.info("relay.opened", seconds=seconds)

    def shut(self) -> None:
        """End a running pulse now and release the relay."""
        with self._cond:
            self._deadline = None
            self._cond.notify_all()
            self._write(self._off_bytes)
            self._log.info("relay.shut")

    def close(self) -> None:
        """Release the relay if it can still be reached, stop the timer and free the port."""
        with self._cond:
            self._closing = True
            self._deadline = None
            self._cond.notify_all()
            timer = self._timer
            if self._link.connected:
                try:
                    self._write(self._off_bytes)
                except PeripheralUnavailable as exc:
                    # An unreachable LCUS board has no USB power, so its relay is released.
                    self._log.warning("relay.release_on_close_failed", error=str(exc))
        if timer is not None:
            timer.join(timeout=2.0)
        self._link.close()

    def _write(self, command: bytes) -> None:
        """Write one command; the caller holds the condition."""

        def exchange(port: serial.Serial) -> None:
            port.write(command)
            port.flush()

        self._link.run(exchange)
        # A command carries the whole state of the channel, so whatever port it went out
        # on, that port now knows everything it needs.
        self._restored_generation = self._link.generation

    def _restore(self) -> None:
        """Drive a freshly opened board to the desired state (a re-plugged board starts released)."""
        with self._cond:
            if self._closing or self._link.generation == self._restored_generation:
                return
            self._write(self._on_bytes if self._deadline is not None else self._off_bytes)
            self._log.info("relay.restored", open=self._deadline is not None)

    def _run_timer(self) -> None:
        with self._cond:
            while not self._closing:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._deadline = None
                try:
                    self._write(self._off_bytes)
                except PeripheralUnavailable as exc:
                    # The board is gone, and with it the power to its relay; the reopen
                    # drives it to "released" again when it comes back.
                    self._log.error("relay.release_failed", error=str(exc))
                else:
                    self._log.info("relay.released")
