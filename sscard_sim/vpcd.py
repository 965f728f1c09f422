"""Attach a card to a vpcd slot of pcscd: the card side of the vpcd protocol.

vpcd (inside pcscd) listens on one TCP port per slot; the card connects to it. Connecting
is inserting the card, closing the connection is pulling it away. Every message either way
is a 2-byte big-endian length and a body; a 1-byte body from vpcd is a control byte
(00 power off, 01 power on, 02 reset, 04 get ATR), anything longer is a command APDU.

Two details decide the speed of every test and of the demo (readers.md §1.3): Debian's vpcd
writes the length and the body in two send() calls, so unless the card re-arms TCP_QUICKACK
before every receive, Nagle and delayed ACK cost about 44 ms per APDU; and each answer must
leave in one write. A vpcd connection that drops while the card is inserted (pcscd
restarted, or the card torn away by a fault injection) is dialled again after a little more
than one pcscd presence poll, so that pcscd sees the card leave and come back, as it would see
a real card pulled away and presented again.
"""

from __future__ import annotations

import socket
import threading
import time

from reader.backends.base import CardSide
from reader.log import get_logger

CTRL_POWER_OFF = 0x00
CTRL_POWER_ON = 0x01
CTRL_RESET = 0x02
CTRL_GET_ATR = 0x04

_log = get_logger(component="vpcd-card")


def _arm_quickack(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Read exactly `size` bytes; None when the peer closed the connection."""
    chunks = bytearray()
    while len(chunks) < size:
        _arm_quickack(sock)
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


class VpcdLink:
    """One card in one vpcd slot; `insert()` and `remove()` at will."""

    def __init__(
        self, card: CardSide, host: str = "127.0.0.1", port: int = 35963, return_delay: float = 0.6
    ) -> None:
        self.card = card
        self.return_delay = return_delay
        self.host = host
        self.port = port
        self._inserted = threading.Event()
        self._connected = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def inserted(self) -> bool:
        return self._inserted.is_set()

    def insert(self) -> None:
        """Put the card in the slot; pcscd notices within its 400 ms presence poll."""
        if self._thread is not None:
            return
        self._inserted.set()
        self._thread = threading.Thread(target=self._run, name=f"vpcd-card-{self.port}", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """Block until vpcd accepted the card's connection."""
        return self._connected.wait(timeout)

    def remove(self, timeout: float = 5.0) -> None:
        """Pull the card away: the connection closes and the card loses power."""
        self._inserted.clear()
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    _log.debug("vpcd_shutdown_on_closed_socket", port=self.port)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        backoff = 0.05
        while self._inserted.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as error:
                _log.debug("vpcd_connect_retry", port=self.port, error=str(error))
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            sock.settimeout(None)
            with self._lock:
                self._sock = sock
            self._connected.set()
            _log.debug("vpcd_connected", port=self.port)
            try:
                self._serve(sock)
            except OSError as error:
                _log.info("vpcd_connection_lost", port=self.port, error=str(error))
            finally:
                self._connected.clear()
                with self._lock:
                    self._sock = None
                sock.close()
                self.card.power_off()
            if self._inserted.is_set():
                time.sleep(self.return_delay)

    def _serve(self, sock: socket.socket) -> None:
        while True:
            header = _recv_exact(sock, 2)
            if header is None:
                return
            body = _recv_exact(sock, int.from_bytes(header, "big"))
            if body is None:
                return
            if len(body) == 1:
                answer = self._control(body[0])
                if answer is None:
                    continue
            else:
                answer = self.card.transmit(body)
            sock.sendall(len(answer).to_bytes(2, "big") + answer)

    def _control(self, code: int) -> bytes | None:
        if code == CTRL_GET_ATR:
            return self.card.atr()
        if code == CTRL_POWER_ON:
            self.card.power_on()
        elif code == CTRL_POWER_OFF:
            self.card.power_off()
        elif code == CTRL_RESET:
            self.card.power_off()
            self.card.power_on()
        else:
            _log.warning("vpcd_unknown_control", port=self.port, code=code)
        return None

    def __enter__(self) -> VpcdLink:
        self.insert()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
