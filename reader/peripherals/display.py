"""Passenger-facing line display with buzzer, over a small text protocol on a serial port.

The display is a few rows of text and a buzzer behind a USB-serial bridge (typically a
microcontroller on a CH340, CP210x or CDC-ACM port). Its protocol is defined here.

Display protocol, version 1
===========================

Transport: serial, 115200 baud 8N1 unless configured otherwise, no flow control. Both
sides send lines of UTF-8 text ending in LF (0x0A; a CR before the LF is ignored). A line
is at most 256 bytes including its LF.

Commands, host to display:

``TEXT <row> <text>``
    Replace row ``<row>`` (decimal, 0 is the top row) with ``<text>``. Exactly one space
    separates the row number from the text; the text may be empty, which blanks the row,
    and never contains control characters. The display clips text wider than the row.

``BEEP <ms>[,<ms>...]``
    Sound the buzzer. The decimal durations in milliseconds alternate on, off, on, ...,
    starting and ending with "on", so there is an odd number of them: at most 15 values,
    each 1..5000. The display answers at once and beeps in the background; a new BEEP
    replaces a pattern still sounding.

Answers, display to host: exactly one per command, in order.

``OK``
    The command was carried out.

``ERR <reason>``
    The command was refused (unknown command, row out of range, malformed pattern) and
    the display is unchanged. The reason is free text for the log.

The display sends nothing else: no greeting, no unsolicited lines. The host sends one
command and waits for its answer before the next, at most ``answer_timeout`` (0.5 s by
default); a display that misses that deadline raises PeripheralTimeout, and the host
discards any late bytes before its next command, so one slow answer can never be taken for
the answer to a later command.

Why waiting for answers is worth a few milliseconds per tap: a display that is powered but
hung (or a wrong device on the configured port) is otherwise invisible, and a passenger
looking at a frozen "please tap" screen is a fault the daemon must be able to report.

Why the host rewrites every row on `show`: the screen content lives on the host, so a
re-plugged (blank) display is restored by sending it again, and no stale row survives a
shorter message.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Sequence

import serial

from reader.log import get_logger
from reader.peripherals.errors import (
    PeripheralError,
    PeripheralProtocolError,
    PeripheralRejected,
    PeripheralTimeout,
    PeripheralUnavailable,
)
from reader.peripherals.link import SerialLink
from reader.peripherals.settings import DISPLAY_BAUDRATE

MAX_LINE_BYTES = 256
MAX_ROWS = 16
MAX_BEEP_VALUES = 15
MAX_BEEP_MS = 5000

# Named buzzer patterns for tap results; `beep` also takes the wire syntax directly.
BEEP_PATTERNS: dict[str, str] = {
    "ok": "80",
    "warning": "80,80,80",
    "denied": "400",
    "error": "150,100,150,100,150",
}

_PATTERN_RE = re.compile(r"[0-9]{1,4}(?:,[0-9]{1,4})*")


def beep_pattern(pattern: str) -> str:
    """Resolve a pattern name or check a literal pattern; return the wire form."""
    wire = BEEP_PATTERNS.get(pattern, pattern)
    if not _PATTERN_RE.fullmatch(wire):
        raise ValueError(f"beep pattern must be one of {sorted(BEEP_PATTERNS)} or 'ms,ms,...', got {pattern!r}")
    values = [int(v) for v in wire.split(",")]
    if len(values) % 2 == 0 or len(values) > MAX_BEEP_VALUES:
        raise ValueError(f"beep pattern needs an odd number of durations, at most {MAX_BEEP_VALUES}: {pattern!r}")
    if not all(1 <= v <= MAX_BEEP_MS for v in values):
        raise ValueError(f"beep durations must be 1..{MAX_BEEP_MS} ms: {pattern!r}")
    return ",".join(str(v) for v in values)


def text_command(row: int, text: str, columns: int) -> bytes:
    """The TEXT line for one row: control characters become spaces, text is clipped to fit."""
    clean = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)[:columns]
    while True:
        line = f"TEXT {row} {clean}\n".encode()
        if len(line) <= MAX_LINE_BYTES:
            return line
        clean = clean[:-1]


class LineDisplay:
    """A display of `rows` rows of at most `columns` characters, plus a buzzer."""

    def __init__(
        self,
        device: str,
        *,
        rows: int = 2,
        columns: int = 20,
        baudrate: int = DISPLAY_BAUDRATE,
        answer_timeout: float = 0.5,
        name: str = "display",
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
    ) -> None:
        if not 1 <= rows <= MAX_ROWS:
            raise ValueError(f"display rows must be 1..{MAX_ROWS}, got {rows}")
        if columns < 1:
            raise ValueError(f"display columns must be at least 1, got {columns}")
        self._rows = rows
        self._columns = columns
        self._name = name
        self._answer_timeout = answer_timeout
        self._link = SerialLink(
            device,
            name=name,
            baudrate=baudrate,
            timeout=answer_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            on_reopen=self._restore,
        )
        self._lock = threading.RLock()
        self._screen: tuple[str, ...] = ("",) * rows
        self._restored_generation = 0
        self._closing = False
        self._log = get_logger(peripheral=name, device=device)

    @property
    def name(self) -> str:
        return self._name

    @property
    def connected(self) -> bool:
        """Whether the serial port is open (an unplug is noticed on the next command)."""
        return self._link.connected

    def connect(self) -> bool:
        """Open the port (or keep trying in the background) and put the current screen up."""
        if self._link.start():
            try:
                self._restore()
            except PeripheralError as exc:
                self._log.warning("display.restore_failed", error=str(exc))
        return self._link.connected

    def wait_connected(self, timeout: float) -> bool:
        """Block until the port is open or `timeout` seconds pass."""
        return self._link.wait_connected(timeout)

    def show(self, lines: Sequence[str]) -> None:
        """Show `lines` from the top row down and blank the rows below them.

        Raises PeripheralUnavailable, PeripheralTimeout, PeripheralRejected or
        PeripheralProtocolError; the screen is remembered either way and put up again
        when the display comes back.
        """
        if isinstance(lines, str):
            raise TypeError("show() takes a sequence of lines, not one string")
        if len(lines) > self._rows:
            raise ValueError(f"{self._name} has {self._rows} rows, got {len(lines)} lines")
        with self._lock:
            self._check_open()
            self._screen = tuple(lines) + ("",) * (self._rows - len(lines))
            self._send_screen()

    def beep(self, pattern: str) -> None:
        """Sound a named pattern (see BEEP_PATTERNS) or a literal 'on,off,on,...' pattern in ms."""
        wire = beep_pattern(pattern)
        with self._lock:
            self._check_open()
            self._request(f"BEEP {wire}\n".encode())
            if self._link.generation != self._restored_generation:
                self._send_screen()

    def close(self) -> None:
        """Free the port; the display keeps what it shows."""
        with self._lock:
            self._closing = True
        self._link.close()

    def _check_open(self) -> None:
        if self._closing:
            raise PeripheralUnavailable(self._name, "display is closed")

    def _restore(self) -> None:
        """Put the remembered screen on a freshly opened (possibly blank) display."""
        with self._lock:
            if self._closing or self._link.generation == self._restored_generation:
                return
            self._send_screen()
            self._log.info("display.restored")

    def _send_screen(self) -> None:
        # Rows that went out before a re-plug landed on the old device; send the whole
        # screen again if the port changed under it (twice in a row is left to the reopen).
        for _ in range(2):
            generations = set()
            for row, text in enumerate(self._screen):
                self._request(text_command(row, text, self._columns))
                generations.add(self._link.generation)
            if len(generations) == 1:
                self._restored_generation = generations.pop()
                return

    def _request(self, command: bytes) -> None:
        def exchange(port: serial.Serial) -> bytes:
            port.reset_input_buffer()
            port.write(command)
            port.flush()
            answer: bytes = port.read_until(b"\n", MAX_LINE_BYTES)
            return answer

        answer = self._link.run(exchange)
        verb = command.split(b" ", 1)[0].decode()
        if not answer.endswith(b"\n"):
            raise PeripheralTimeout(self._name, f"no answer to {verb} within {self._answer_timeout} s (got {answer!r})")
        text = answer.rstrip(b"\r\n")
        if text == b"OK":
            return
        if text == b"ERR" or text.startswith(b"ERR "):
            reason = text[4:].decode("utf-8", errors="replace")
            raise PeripheralRejected(self._name, f"{verb} refused: {reason}")
        raise PeripheralProtocolError(self._name, f"unexpected answer to {verb}: {answer!r}")
