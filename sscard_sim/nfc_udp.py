"""Put a card on nfcpy's `udp` driver: the card answers as an ISO-DEP Type 4A (or 4B) card.

nfcpy's udp driver (readers.md §2.3) is a reader without hardware: every RF frame is one UDP
datagram `"<brty> <hex>"` (for example `b"106A e080"`), and `RFOFF` tells that the reader
switched its field off. A reader opened with `ContactlessFrontend('udp:localhost:PORT')`
talks to whatever listens on PORT, so this module listens there and plays the card, without
nfcpy on this side. Three layers, so that the PN532 simulator reuses the first two:

* `ContactlessCard`: the card's RF protocol, ISO/IEC 14443-3 activation (type A: REQA/WUPA,
  anticollision and SELECT over 1 to 3 cascade levels, HLTA; type B: REQB/WUPB, ATTRIB,
  HLTB) and the ISO/IEC 14443-4 block protocol (RATS/ATS, PPS, I-blocks chained both ways,
  R(ACK)/R(NAK), S(DESELECT), CID). One frame in, at most one frame out; no I/O, no threads.
  S(WTX) is never requested. The ATS historical bytes are the historical bytes of the
  `CardSide`'s ATR, so a reader that builds the PC/SC part 3 ATR from the ATS (readers do)
  shows the same ATR as the card gives on vpcd.
* `FieldCard`: a `CardSide` held in a field. Power follows the field and the card's presence
  (`insert()`/`remove()`); `CardSide` calls run on one worker thread, in order. While the
  application works on an APDU the card still acknowledges R(NAK) presence checks, so a card
  that is slow or hung (still in the field) is told apart from a card that left (silent).
* `NfcUdpCard`: the udp driver's wire format on a socket, with start/stop and insert/remove.

Block numbering follows ISO/IEC 14443-4 (PICC rules): the block number starts at 1 on
activation, toggles on every I-block received and on every R(ACK) that continues a chain; an
R(NAK) or R(ACK) carrying the current number asks for the last block again, an R(NAK) with the
other number is answered R(ACK).

The reader waits only 30 ms for the ATS (nfcpy's RATS deadline): the card is powered and its
ATS computed when the field wakes it (REQA/WUPA/REQB), so RATS is answered from memory.
"""

from __future__ import annotations

import concurrent.futures
import enum
import os
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Literal

from reader.backends.base import CardSide
from reader.log import get_logger

Technology = Literal["A", "B"]

DEFAULT_UID = bytes.fromhex("08A1B2C3")  # 4-byte random-ID form (first byte 08)
DEFAULT_PUPI = bytes.fromhex("5A6B7C8D")
DEFAULT_SAK = 0x20  # ISO/IEC 14443-4 compliant, no cascade

FSC_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)

REQA = 0x26
WUPA = 0x52
HLTA = bytes.fromhex("5000")
SEL_CODES = (0x93, 0x95, 0x97)
CASCADE_TAG = 0x88
RATS = 0xE0
REQB = 0x05
ATTRIB = 0x1D
HLTB = 0x50

_PCB_CID = 0x08
_PCB_NAD = 0x04
_PCB_CHAIN = 0x10
_PCB_NAK = 0x10

_log = get_logger(component="nfc-card")


def historical_bytes(atr: bytes) -> bytes:
    """The historical bytes of an ISO 7816-3 ATR (empty when the ATR is too short to say)."""
    if len(atr) < 2:
        return b""
    count = atr[1] & 0x0F
    indicator = atr[1] >> 4
    index = 2
    while True:
        index += (indicator & 0x07).bit_count()  # TA, TB, TC
        if not indicator & 0x08:
            break
        if index >= len(atr):
            return b""
        indicator = atr[index] >> 4
        index += 1
    return bytes(atr[index : index + count])


def _bcc(data: bytes) -> int:
    return reduce(xor, data, 0)


class _State(enum.Enum):
    OFF = "off"  # no power (out of the field, or the field is off)
    IDLE = "idle"
    READY = "ready"  # answered REQA/WUPA (A) or REQB/WUPB (B)
    ACTIVE = "active"  # selected (A), waiting for RATS
    HALT = "halt"
    PROTOCOL = "protocol"  # ISO/IEC 14443-4 active: blocks only


@dataclass(frozen=True)
class ApduRequest:
    """A complete command APDU the card's application must answer (see `ContactlessCard.complete`)."""

    apdu: bytes


Reply = bytes | ApduRequest | None


class ContactlessCard:
    """The RF protocol of one ISO-DEP card, frame by frame."""

    def __init__(
        self,
        technology: Technology = "A",
        *,
        uid: bytes = DEFAULT_UID,
        sak: int = DEFAULT_SAK,
        pupi: bytes = DEFAULT_PUPI,
        application_data: bytes = bytes(4),
        fsci: int = 8,
        fwi: int = 7,
    ) -> None:
        if technology not in ("A", "B"):
            raise ValueError(f"technology must be 'A' or 'B', not {technology!r}")
        if len(uid) not in (4, 7, 10):
            raise ValueError("a type A UID has 4, 7 or 10 bytes")
        if len(pupi) != 4 or len(application_data) != 4:
            raise ValueError("a type B PUPI and its application data have 4 bytes each")
        if not 0 <= fsci <= 8 or not 0 <= fwi <= 14:
            raise ValueError("FSCI is 0..8 and FWI 0..14")
        self.technology: Technology = technology
        self.uid = bytes(uid)
        self.sak = sak
        self.pupi = bytes(pupi)
        self.application_data = bytes(application_data)
        self.fsci = fsci
        self.fwi = fwi
        self._levels = self._cascade_levels(self.uid)
        self._state = _State.OFF
        self._historical = b""
        self._level = 0
        self._block_number = 1
        self._cid = 0
        self._fsd = 256
        self._with_cid = False
        self._rx = bytearray()
        self._tx_rest = b""
        self._last_block: bytes | None = None
        self._pending = False
        self._pps_allowed = False

    # -- power -------------------------------------------------------------------------

    def field_on(self, atr: bytes) -> None:
        """Power up in a field; `atr` is the card's ATR, whose historical bytes go into the ATS."""
        self._historical = historical_bytes(atr)
        self._state = _State.IDLE
        self._level = 0
        self._reset_protocol()

    def field_off(self) -> None:
        """Lose power: any activation, chain or APDU in progress is gone."""
        self._state = _State.OFF
        self._reset_protocol()

    @property
    def powered(self) -> bool:
        return self._state is not _State.OFF

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def busy(self) -> bool:
        """An APDU was handed to the application and its answer is not in yet."""
        return self._pending

    # -- what the card announces -----------------------------------------------------------

    @property
    def atqa(self) -> bytes:
        """ATQA as sent on the air (low byte first): UID size and bit-frame anticollision."""
        size = (len(self.uid) - 4) // 3
        return bytes([size << 6 | 0x04, 0x00])

    @property
    def ats(self) -> bytes:
        """ATS with TA (106 kbit/s only), TB (FWI, SFGI 0) and TC (CID supported, no NAD)."""
        body = bytes([0x70 | self.fsci, 0x80, self.fwi << 4, 0x02]) + self._historical
        return bytes([len(body) + 1]) + body

    @property
    def atqb(self) -> bytes:
        """ATQB: PUPI, application data, protocol info (106 kbit/s, FSCI, ISO 14443-4, FWI, CID)."""
        protocol = bytes([0x00, self.fsci << 4 | 0x01, self.fwi << 4 | 0x01])
        return bytes([0x50]) + self.pupi + self.application_data + protocol

    # -- frames ------------------------------------------------------------------------

    def receive(self, frame: bytes) -> Reply:
        """Answer one frame from the reader: a frame to send back, an APDU to run, or silence."""
        if not frame or self._state is _State.OFF:
            return None
        if self._state is _State.PROTOCOL:
            return self._block(frame)
        if self.technology == "A":
            return self._type_a(frame)
        return self._type_b(frame)

    def complete(self, response: bytes) -> bytes | None:
        """The application answered the pending APDU: the first response block (None if none pending)."""
        if not self._pending:
            return None
        self._pending = False
        self._block_number ^= 1
        self._tx_rest = bytes(response)
        return self._next_response_block()

    # -- ISO/IEC 14443-3 -----------------------------------------------------------------

    @staticmethod
    def _cascade_levels(uid: bytes) -> list[bytes]:
        if len(uid) == 4:
            parts = [uid]
        elif len(uid) == 7:
            parts = [bytes([CASCADE_TAG]) + uid[:3], uid[3:]]
        else:
            parts = [bytes([CASCADE_TAG]) + uid[:3], bytes([CASCADE_TAG]) + uid[3:6], uid[6:]]
        return [part + bytes([_bcc(part)]) for part in parts]

    def _type_a(self, frame: bytes) -> Reply:
        if len(frame) == 1 and frame[0] in (REQA, WUPA):
            woken = self._state in (_State.IDLE, _State.READY) or (frame[0] == WUPA and self._state is _State.HALT)
            if not woken:
                return None
            self._state = _State.READY
            self._level = 0
            return self.atqa
        if self._state is _State.READY:
            return self._anticollision(frame)
        if self._state is _State.ACTIVE:
            if frame == HLTA:
                self._state = _State.HALT
                return None
            if len(frame) == 2 and frame[0] == RATS:
                return self._activate(fsdi=frame[1] >> 4, cid=frame[1] & 0x0F, answer=self.ats)
        return None

    def _anticollision(self, frame: bytes) -> Reply:
        if len(frame) < 2 or frame[0] != SEL_CODES[self._level]:
            return None
        level = self._levels[self._level]
        if frame[1] == 0x20 and len(frame) == 2:
            return level
        if frame[1] == 0x70 and frame[2:] == level:
            if self._level + 1 < len(self._levels):
                self._level += 1
                return bytes([0x04])  # cascade bit: UID not complete
            self._state = _State.ACTIVE
            return bytes([self.sak & ~0x04 & 0xFF])
        return None

    def _type_b(self, frame: bytes) -> Reply:
        if frame[0] == REQB and len(frame) == 3:
            wake_up = bool(frame[2] & 0x08)
            woken = self._state in (_State.IDLE, _State.READY) or (wake_up and self._state is _State.HALT)
            if not woken or frame[1] not in (0x00, self.application_data[0]):
                return None
            self._state = _State.READY
            return self.atqb
        if self._state is not _State.READY:
            return None
        if frame[0] == ATTRIB and len(frame) >= 9 and frame[1:5] == self.pupi:
            # MBLI 0 (no limit announced) in the high nibble, the CID in the low nibble.
            return self._activate(fsdi=frame[6] & 0x0F, cid=frame[8] & 0x0F, answer=bytes([frame[8] & 0x0F]))
        if frame[0] == HLTB and frame[1:] == self.pupi:
            self._state = _State.HALT
            return b"\x00"
        return None

    # -- ISO/IEC 14443-4 -----------------------------------------------------------------

    def _reset_protocol(self) -> None:
        self._block_number = 1
        self._cid = 0
        self._fsd = 256
        self._with_cid = False
        self._rx = bytearray()
        self._tx_rest = b""
        self._last_block = None
        self._pending = False
        self._pps_allowed = False

    def _activate(self, fsdi: int, cid: int, answer: bytes) -> bytes:
        self._reset_protocol()
        self._fsd = FSC_TABLE[min(fsdi, 8)]
        self._cid = cid
        self._state = _State.PROTOCOL
        self._pps_allowed = self.technology == "A"
        return answer

    def _header(self, pcb: int) -> bytes:
        if self._with_cid:
            return bytes([pcb | _PCB_CID, self._cid])
        return bytes([pcb])

    def _r_ack(self) -> bytes:
        block = self._header(0xA2 | self._block_number)
        self._last_block = block
        return block

    def _next_response_block(self) -> bytes:
        room = self._fsd - 3 - (1 if self._with_cid else 0)  # PCB, [CID], CRC
        chunk, self._tx_rest = self._tx_rest[:room], self._tx_rest[room:]
        pcb = 0x02 | self._block_number | (_PCB_CHAIN if self._tx_rest else 0)
        block = self._header(pcb) + chunk
        self._last_block = block
        return block

    def _block(self, frame: bytes) -> Reply:
        pcb = frame[0]
        if self._pps_allowed and pcb & 0xF0 == 0xD0 and len(frame) >= 2:
            self._pps_allowed = False
            return bytes([pcb]) if pcb & 0x0F == self._cid else None
        kind = "I" if pcb & 0xE2 == 0x02 else "R" if pcb & 0xE6 == 0xA2 else "S" if pcb & 0xC7 == 0xC2 else ""
        if not kind:
            return None
        body = 1
        if pcb & _PCB_CID:
            if len(frame) < 2 or frame[1] & 0x0F != self._cid:
                return None  # addressed to another card
            body = 2
        elif self._cid != 0:
            return None  # a card given a CID other than 0 answers only blocks that carry it
        self._with_cid = bool(pcb & _PCB_CID)
        self._pps_allowed = False
        number = pcb & 0x01
        if kind == "R":
            return self._r_block(number, nak=bool(pcb & _PCB_NAK))
        if self._pending:
            return None  # busy with the previous command: not listening
        if kind == "S":
            if pcb & 0x30 == 0x00:  # DESELECT; WTX responses are never expected
                self._state = _State.HALT
                answer = frame[:body]
                self._reset_protocol()
                return answer
            return None
        if pcb & _PCB_NAD:
            body += 1  # the node address is not used: it is skipped and not echoed
        self._tx_rest = b""
        self._rx += frame[body:]
        self._block_number ^= 1
        if pcb & _PCB_CHAIN:
            return self._r_ack()
        apdu = bytes(self._rx)
        self._rx.clear()
        self._block_number ^= 1  # toggled again when the answer is sent (complete)
        self._pending = True
        return ApduRequest(apdu)

    def _r_block(self, number: int, nak: bool) -> bytes | None:
        if self._pending:  # working on a command: acknowledge presence, nothing to repeat yet
            return self._header(0xA2 | self._block_number) if nak else None
        if number == self._block_number:
            return self._last_block if self._last_block is not None else self._r_ack()
        if nak:
            return self._header(0xA2 | self._block_number)
        if self._tx_rest:
            self._block_number ^= 1
            return self._next_response_block()
        return None


Deliver = Callable[[bytes], None]


class FieldCard:
    """A `CardSide` in a reader's field: power follows field and presence, APDUs run on a worker."""

    POWER_ON_WAIT = 0.5

    def __init__(self, card: CardSide, contactless: ContactlessCard, *, present: bool = True) -> None:
        self.card = card
        self.contactless = contactless
        self._present = present
        self._lock = threading.Lock()
        self._session = 0
        self._card_powered = False
        self._powering: concurrent.futures.Future[bytes] | None = None
        self._worker_ident: int | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="nfc-card", initializer=self._mark_worker
        )

    @property
    def present(self) -> bool:
        return self._present

    def insert(self) -> None:
        """Bring the card into the field; it powers up when the reader next talks."""
        with self._lock:
            self._present = True

    def remove(self, wait: float = 2.0) -> None:
        """Take the card out of the field: from now on it is silent, and it loses power.

        Returns once the card's `power_off` has run (at most `wait` seconds: a command still
        running in the card is finished first). Called from inside the card (a `CardSide`
        that leaves the field while it answers), it returns at once and the power goes when
        the command is done.
        """
        with self._lock:
            self._present = False
            self._cut_power()
        self._settle(wait)

    def field_off(self) -> None:
        """The reader switched its field off."""
        with self._lock:
            self._cut_power()

    def receive(self, frame: bytes, deliver: Deliver) -> bool:
        """Hand one frame to the card; its answer goes to `deliver`, now or when the APDU is done.

        False when no answer will come (the card is away, asleep, or ignores the frame).
        """
        with self._lock:
            if not self._present:
                return False
            if not self.contactless.powered and not self._power_up():
                return False
            reply = self.contactless.receive(frame)
            if isinstance(reply, ApduRequest):
                running = self._worker.submit(self._run_apdu, reply.apdu, self._session, deliver)
                running.add_done_callback(_report_failure)
                return True
            if reply is None:
                return False
            deliver(reply)
            return True

    def close(self, wait: float = 2.0) -> None:
        """Cut the power for good; returns once the card's `power_off` ran (at most `wait` s)."""
        with self._lock:
            self._cut_power()
        self._settle(wait)
        self._worker.shutdown(wait=False, cancel_futures=False)

    def _settle(self, wait: float) -> None:
        """Wait until the card calls queued so far have run (not from inside the card)."""
        if threading.get_ident() == self._worker_ident:
            return
        barrier = self._worker.submit(lambda: None)
        try:
            barrier.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            _log.warning("nfc_card_still_busy", wait=wait)

    def _mark_worker(self) -> None:
        self._worker_ident = threading.get_ident()

    def _power_up(self) -> bool:
        """Power the card (lock held); False while the worker is still busy with an older call."""
        if self._powering is None:
            self._powering = self._worker.submit(self.card.power_on)
        powering = self._powering
        concurrent.futures.wait([powering], timeout=self.POWER_ON_WAIT)
        if not powering.done():
            return False  # the application is still stuck in an earlier command
        self._powering = None
        failure = powering.exception()
        if failure is not None:
            _log.error("nfc_card_power_on_failed", error=repr(failure), exc_info=failure)
            return False
        atr = powering.result()
        self._card_powered = True
        self.contactless.field_on(atr)
        return True

    def _cut_power(self) -> None:
        self._session += 1
        self.contactless.field_off()
        if self._card_powered or self._powering is not None:
            self._powering = None
            self._card_powered = False
            self._worker.submit(self.card.power_off)

    def _run_apdu(self, apdu: bytes, session: int, deliver: Deliver) -> None:
        response = self.card.transmit(apdu)
        with self._lock:
            if session != self._session:
                _log.debug("nfc_answer_lost", reason="power cut while the card worked")
                return
            block = self.contactless.complete(response)
            if block is not None:
                deliver(block)


def _report_failure(done: concurrent.futures.Future[None]) -> None:
    """A card that raised instead of answering stays silent, as a crashed card would; say why."""
    failure = done.exception()
    if failure is not None:
        _log.error("nfc_card_transmit_failed", error=repr(failure), exc_info=failure)


def _is_wake_up(technology: Technology, frame: bytes) -> bool:
    if technology == "A":
        return len(frame) == 1 and frame[0] in (REQA, WUPA)
    return len(frame) == 3 and frame[0] == REQB


class NfcUdpCard:
    """A card listening where nfcpy's udp driver sends its frames (`udp:HOST:PORT`)."""

    def __init__(
        self,
        card: CardSide,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        technology: Technology = "A",
        uid: bytes = DEFAULT_UID,
        sak: int = DEFAULT_SAK,
        pupi: bytes = DEFAULT_PUPI,
        fsci: int = 8,
        fwi: int = 7,
        present: bool = True,
    ) -> None:
        self.contactless = ContactlessCard(technology, uid=uid, sak=sak, pupi=pupi, fsci=fsci, fwi=fwi)
        self.field = FieldCard(card, self.contactless, present=present)
        self.host = host
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._reader: tuple[str, int] | None = None
        self._send_lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._sock is None:
            return self._requested_port
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def path(self) -> str:
        """The nfcpy path that reaches this card."""
        return f"udp:{self.host}:{self.port}"

    @property
    def present(self) -> bool:
        return self.field.present

    def insert(self) -> None:
        self.field.insert()

    def remove(self) -> None:
        self.field.remove()

    def start(self) -> NfcUdpCard:
        """Bind the port and answer frames on a thread; returns self."""
        if self._thread is not None:
            return self
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, self._requested_port))
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"nfc-udp-card-{self.port}", daemon=True)
        self._thread.start()
        _log.info("nfc_udp_card_listening", path=self.path, technology=self.contactless.technology)
        return self

    def stop(self) -> None:
        """Stop answering and release the port; the card loses power."""
        if self._thread is None:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(5.0)
        self._thread = None
        self.field.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def __enter__(self) -> NfcUdpCard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self._sock is not None
        watched: list[socket.socket | int] = [self._sock, self._wake_r]
        while not self._stopping:
            readable, _, _ = select.select(watched, [], [])
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
                continue
            try:
                datagram, addr = self._sock.recvfrom(65535)
            except OSError as error:
                _log.warning("nfc_udp_receive_failed", error=str(error))
                continue
            self._datagram(datagram, addr)

    def _datagram(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if datagram.startswith(b"RFOFF"):
            if addr == self._reader:
                self.field.field_off()
                self._reader = None
            return
        try:
            brty_raw, hex_frame = datagram.split()
            frame = bytes.fromhex(hex_frame.decode("ascii"))
        except ValueError:
            _log.debug("nfc_udp_malformed_datagram", size=len(datagram))
            return
        brty = brty_raw.decode("ascii", "replace")
        technology = self.contactless.technology
        if not brty.endswith(technology):
            return
        if addr != self._reader:
            if not _is_wake_up(technology, frame):
                return  # another reader, in the middle of a session: not heard
            if self._reader is not None:
                self.field.field_off()  # a new reader's field: the card starts over
            self._reader = addr
        self.field.receive(frame, lambda block: self._send(brty_raw, block, addr))

    def _send(self, brty: bytes, block: bytes, addr: tuple[str, int]) -> None:
        sock = self._sock
        if sock is None:
            return
        with self._send_lock:
            sock.sendto(brty + b" " + block.hex().encode("ascii"), addr)
