"""A PN532 on a UART, simulated on a pseudo-terminal, with one virtual card in its field.

nfcpy's `tty:...:pn532` driver (readers.md §2.4) talks to a PN532 in HSU mode through
pyserial. This simulator answers it from the other end of a pty pair, so the whole serial
path runs as on a terminal with a PN532 module: framing, checksums, ACKs, the baud rate
switch (a pty ignores the speed), and nfcpy's own ISO-DEP over InCommunicateThru.

Host frames (PN532 user manual, §6.2): `00 00 FF LEN LCS D4 CMD data DCS 00`, or the extended
form `00 00 FF FF FF LENM LENL LCS D4 CMD data DCS 00` for more than 254 bytes, any number of
00 bytes before (nfcpy sends a 10-byte preamble to wake the chip). The chip answers each
well-formed command with an ACK (`00 00 FF 00 FF 00`) and then a response frame `D5 CMD+1 ...`;
an ACK from the host cancels, a NAK (`00 00 FF FF 00 00`) asks for the last response again,
and a command this simulator does not model gets the syntax error frame (`... 7F 81 00`).

Commands: Diagnose (line test echo, ROM/RAM, card presence), GetFirmwareVersion (PN532 v1.6),
GetGeneralStatus, ReadRegister/WriteRegister (a register file; CIU_FIFOData still holds the
REQA after a type A poll found nothing, which is how nfcpy tells "no card"), Read/WriteGPIO,
SetSerialBaudRate, SetParameters, SAMConfiguration, PowerDown, RFConfiguration (field on/off,
the InCommunicateThru timeout), InListPassiveTarget (106 kbit/s type A and type B), InDataExchange,
InCommunicateThru, InDeselect, InRelease, InSelect; InJumpForDEP/PSL and InATR find no target.

The card is a `ContactlessCard` behind a `FieldCard` (sscard_sim.nfc_udp), so it powers up when
the field comes on and speaks real ISO/IEC 14443-3/-4 frames. nfcpy switches the firmware's
automatic RATS off (SetParameters 00) and runs ISO-DEP itself through InCommunicateThru; with
automatic RATS on (the default at power-up here), InListPassiveTarget activates ISO-DEP and
returns the ATS, and InDataExchange carries APDUs, the simulated firmware doing the block
protocol with the card (FSD 256, host chaining with the MI bit).
"""

from __future__ import annotations

import os
import queue
import select
import threading
import tty
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from reader.backends.base import CardSide
from reader.log import get_logger
from sscard_sim.nfc_udp import (
    DEFAULT_PUPI,
    DEFAULT_SAK,
    DEFAULT_UID,
    FSC_TABLE,
    ContactlessCard,
    FieldCard,
    Technology,
)

ACK = bytes.fromhex("0000FF00FF00")
NAK = bytes.fromhex("0000FFFF0000")
SYNTAX_ERROR = bytes.fromhex("0000FF01FF7F8100")
FIRMWARE = bytes.fromhex("32010607")  # IC PN532, version 1.6, ISO 14443 A + B + ISO 18092

MAX_DATA = 262  # InDataExchange payload per host frame
REG_FIFO_DATA = 0x6339
SET_PARAM_AUTO_RATS = 0x10
DEFAULT_PARAMETERS = 0x14  # automatic ATR_RES and RATS [inferred power-up default]

STATUS_OK = 0x00
STATUS_TIMEOUT = 0x01
STATUS_PROTOCOL = 0x0B
STATUS_BAD_CONTEXT = 0x27

_log = get_logger(component="pn532-sim")


def _frame(payload: bytes) -> bytes:
    """A PN532 frame around `payload` (TFI first), normal or extended as its length requires."""
    size = len(payload)
    checksum = (-sum(payload)) & 0xFF
    if size < 0xFF:
        head = bytes([0x00, 0x00, 0xFF, size, (-size) & 0xFF])
    else:
        high, low = size >> 8, size & 0xFF
        head = bytes([0x00, 0x00, 0xFF, 0xFF, 0xFF, high, low, (-(high + low)) & 0xFF])
    return head + payload + bytes([checksum, 0x00])


def _strip_cascade_tags(uid: bytes) -> bytes:
    """A UID as InListPassiveTarget receives it (cascade tags before levels 1 and 2) made plain."""
    if len(uid) == 8 and uid[0] == 0x88:
        return uid[1:]
    if len(uid) == 12 and uid[0] == 0x88 and uid[4] == 0x88:
        return uid[1:4] + uid[5:]
    return uid


class _Reply:
    """One RF answer awaited by the chip; an answer that comes after the chip stopped waiting is lost."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()

    def put(self, block: bytes) -> None:
        with self._lock:
            if not self._closed:
                self._queue.put(block)

    def get(self, timeout: float | None) -> bytes | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            with self._lock:
                self._closed = True


class Pn532Simulator:
    """A PN532 in HSU mode at the far end of a pty; `device` is the end nfcpy opens."""

    def __init__(
        self,
        card: CardSide,
        *,
        technology: Technology = "A",
        uid: bytes = DEFAULT_UID,
        sak: int = DEFAULT_SAK,
        pupi: bytes = DEFAULT_PUPI,
        fsci: int = 8,
        fwi: int = 7,
        present: bool = True,
        link: str | Path | None = None,
    ) -> None:
        self.contactless = ContactlessCard(technology, uid=uid, sak=sak, pupi=pupi, fsci=fsci, fwi=fwi)
        self.field = FieldCard(card, self.contactless, present=present)
        self.commands: list[int] = []
        self._link = Path(link) if link is not None else None
        self._master = -1
        self._slave = -1
        self._device = ""
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._buffer = bytearray()
        self._last_response = b""
        self._registers: dict[int, int] = {}
        self._parameters = DEFAULT_PARAMETERS
        self._rf_on = False
        self._rf_timeout: float | None = 0.0512  # RFConfiguration item 02, fRetryTimeout 0x0A
        self._target = False
        self._firmware_iso_dep = False
        self._pni = 0
        self._target_fsc = 256
        self._target_cid: int | None = None
        self._host_chain = bytearray()
        self._response_rest = b""

    # -- life cycle ----------------------------------------------------------------------

    @property
    def device(self) -> str:
        """The pty end a host opens, for example /dev/pts/3."""
        return self._device

    @property
    def link(self) -> Path | None:
        return self._link

    @property
    def path(self) -> str:
        """A path for nfcpy's own parser (only with a link directly under /dev), else 'tty:<device>:pn532'."""
        if self._link is not None and self._link.parent == Path("/dev"):
            return f"tty:{self._link.name}:pn532"
        return f"tty:{self._device}:pn532"

    @property
    def present(self) -> bool:
        return self.field.present

    def insert(self) -> None:
        self.field.insert()

    def remove(self) -> None:
        self.field.remove()

    def start(self) -> Pn532Simulator:
        """Open the pty pair (and the link, if asked) and answer frames on a thread; returns self."""
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        # Raw from the start: a host's first bytes must not be echoed or line-edited. Keeping our
        # own descriptor of the slave open means nfcpy can close and reopen it (it does, to change
        # speed) without the master seeing a hang-up.
        tty.setraw(self._slave)
        self._device = os.ttyname(self._slave)
        if self._link is not None:
            if self._link.is_symlink():
                self._link.unlink()  # a stale link of an earlier run; never a real device
            self._link.symlink_to(self._device)
        os.set_blocking(self._master, False)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="pn532-sim", daemon=True)
        self._thread.start()
        _log.info("pn532_sim_ready", device=self._device, link=str(self._link) if self._link else None)
        return self

    def stop(self) -> None:
        """Stop the chip, remove the link and close the pty; the card loses power."""
        if self._thread is None:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(5.0)
        self._thread = None
        self.field.close()
        if self._link is not None and self._link.is_symlink():
            self._link.unlink()
        for fd in (self._wake_r, self._wake_w, self._master, self._slave):
            os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> Pn532Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serial line ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            readable, _, _ = select.select([self._master, self._wake_r], [], [])
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
                continue
            try:
                chunk = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError as error:  # EIO: no host has the pty open right now
                _log.debug("pn532_sim_read_failed", error=str(error))
                continue
            self._buffer += chunk
            while self._parse_one():
                pass

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                select.select([], [self._master], [], 0.05)
                continue
            view = view[written:]

    def _parse_one(self) -> bool:
        """Consume one frame from the buffer; False when more bytes are needed."""
        buf = self._buffer
        start = 0
        while start < len(buf) and buf[start] == 0x00:
            start += 1
        del buf[:start]
        if not buf:
            return False
        if buf[0] != 0xFF:
            del buf[:1]  # not a start code: resynchronise
            return True
        if len(buf) < 3:
            return False
        if self._control_frame(buf):
            return True
        bounds = _payload_bounds(buf)
        if bounds is None:
            return False
        head, length = bounds
        if length < 0:  # a length whose checksum does not add up: resynchronise
            del buf[:1]
            return True
        if len(buf) < head + length + 1:
            return False
        payload = bytes(buf[head : head + length])
        checksum = buf[head + length]
        del buf[: head + length + 1]
        if (sum(payload) + checksum) & 0xFF or len(payload) < 2 or payload[0] != 0xD4:
            _log.debug("pn532_sim_bad_frame", size=len(payload))
            self._write(SYNTAX_ERROR)
            return True
        self._write(ACK)
        self._command(payload[1], payload[2:])
        return True

    def _control_frame(self, buf: bytearray) -> bool:
        """An ACK (the host cancels: nothing to do) or a NACK (send the last answer again)."""
        if (buf[1], buf[2]) == (0x00, 0xFF):
            del buf[:3]
            return True
        if (buf[1], buf[2]) == (0xFF, 0x00):
            del buf[:3]
            if self._last_response:
                self._write(self._last_response)
            return True
        return False

    def _command(self, code: int, params: bytes) -> None:
        self.commands.append(code)
        handler = self._HANDLERS.get(code)
        try:
            data = handler(self, params) if handler is not None else None
        except IndexError:  # parameters too short for the command
            data = None
        if data is None:
            _log.debug("pn532_sim_unsupported_command", code=f"{code:02X}")
            self._last_response = SYNTAX_ERROR
        else:
            self._last_response = _frame(bytes([0xD5, code + 1]) + data)
        self._write(self._last_response)

    # -- RF ------------------------------------------------------------------------------

    def _field(self, on: bool) -> None:
        if on == self._rf_on:
            return
        self._rf_on = on
        if not on:
            self.field.field_off()
            self._release_target()

    def _rf(self, frame: bytes, timeout: float | None) -> bytes | None:
        """Send one frame to whatever is in the field; its answer, or None when none came in time."""
        self._field(True)
        reply = _Reply()
        if not self.field.receive(frame, reply.put):
            return None
        return reply.get(timeout)

    def _release_target(self) -> None:
        self._target = False
        self._firmware_iso_dep = False
        self._host_chain.clear()
        self._response_rest = b""

    def _find_type_a(self, wanted_uid: bytes) -> bytes | None:
        atqa = self._rf(bytes([0x26]), 0.005)
        if atqa is None or len(atqa) != 2:
            self._registers[REG_FIFO_DATA] = 0x26  # the REQA is still in the FIFO: nobody answered
            return None
        uid = bytearray()
        sak = 0
        for level in (0x93, 0x95, 0x97):
            cl = self._rf(bytes([level, 0x20]), 0.005)
            if cl is None or len(cl) != 5:
                return None
            answer = self._rf(bytes([level, 0x70]) + cl, 0.005)
            if answer is None or len(answer) != 1:
                return None
            sak = answer[0]
            uid += cl[1:4] if sak & 0x04 else cl[:4]
            if not sak & 0x04:
                break
        if wanted_uid and _strip_cascade_tags(wanted_uid) != bytes(uid):
            return None
        target = bytes([atqa[1], atqa[0], sak, len(uid)]) + bytes(uid)
        if sak & 0x20 and self._parameters & SET_PARAM_AUTO_RATS:
            ats = self._rf(bytes([0xE0, 0x80]), 0.03)
            if ats is None or not ats or ats[0] != len(ats):
                return None
            self._start_firmware_iso_dep(ats, cid=None)
            target += ats
        return target

    def _find_type_b(self, afi: int) -> bytes | None:
        atqb = self._rf(bytes([0x05, afi, 0x00]), 0.005)
        if atqb is None or len(atqb) < 12 or atqb[0] != 0x50:
            return None
        target = atqb[:12]
        if atqb[10] & 0x01:  # ISO/IEC 14443-4: the firmware sends ATTRIB (FSD 64, CID 1)
            attrib = bytes([0x1D]) + atqb[1:5] + bytes([0x00, 0x05, 0x01, 0x01])
            answer = self._rf(attrib, 0.03)
            if answer is None:
                return None
            self._target_fsc = FSC_TABLE[min(atqb[10] >> 4, 8)]
            self._firmware_iso_dep = True
            self._pni = 0
            self._target_cid = 1
            target += bytes([len(answer)]) + answer
        else:
            target += b"\x00"
        return target

    def _start_firmware_iso_dep(self, ats: bytes, cid: int | None) -> None:
        self._target_fsc = FSC_TABLE[min(ats[1] & 0x0F, 8)] if len(ats) > 1 else 32
        self._firmware_iso_dep = True
        self._pni = 0
        self._target_cid = cid

    def _iso_dep_block(self, pcb: int, inf: bytes) -> bytes | None:
        if self._target_cid is not None:
            return self._rf(bytes([pcb | 0x08, self._target_cid]) + inf, self._rf_timeout)
        return self._rf(bytes([pcb]) + inf, self._rf_timeout)

    def _iso_dep_exchange(self, apdu: bytes) -> bytes | None:
        """The firmware's half of ISO-DEP: chain the command, collect the chained answer."""
        header = 2 if self._target_cid is not None else 1
        room = self._target_fsc - 2 - header
        chunks = [apdu[i : i + room] for i in range(0, len(apdu), room)] or [b""]
        answer: bytes | None = None
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            answer = self._iso_dep_block(0x02 | self._pni | (0x10 if more else 0), chunk)
            if answer is None:
                return None
            if more:
                if answer[0] & 0xF6 != 0xA2 or answer[0] & 0x01 != self._pni:
                    return None
                self._pni ^= 1
        response = bytearray()
        while answer is not None:
            if answer[0] & 0xE2 != 0x02 or answer[0] & 0x01 != self._pni:
                return None
            response += answer[header:]
            self._pni ^= 1
            if not answer[0] & 0x10:
                return bytes(response)
            answer = self._iso_dep_block(0xA2 | self._pni, b"")
        return None

    # -- commands ------------------------------------------------------------------------

    def _diagnose(self, params: bytes) -> bytes:
        if params[:1] == b"\x00":
            return params  # communication line test: echo
        if params[:1] == b"\x06":  # card presence (ISO/IEC 14443-4)
            present = self._firmware_iso_dep and self._iso_dep_block(0xB2 | self._pni, b"") is not None
            return bytes([STATUS_OK if present else STATUS_TIMEOUT])
        return bytes([STATUS_OK])

    def _firmware(self, params: bytes) -> bytes:
        return FIRMWARE

    def _general_status(self, params: bytes) -> bytes:
        targets = b""
        if self._target:
            kind = 0x03 if self.contactless.technology == "B" else 0x00
            targets = bytes([1, 0x00, 0x00, kind])
        return bytes([0x00, int(self._rf_on), 1 if self._target else 0]) + targets + b"\x00"

    def _read_register(self, params: bytes) -> bytes:
        addresses = [params[i] << 8 | params[i + 1] for i in range(0, len(params) - 1, 2)]
        return bytes(self._registers.get(address, 0x00) for address in addresses)

    def _write_register(self, params: bytes) -> bytes:
        for i in range(0, len(params) - 2, 3):
            self._registers[params[i] << 8 | params[i + 1]] = params[i + 2]
        return b""

    def _read_gpio(self, params: bytes) -> bytes:
        return bytes([0xFF, 0xFF, 0x00])

    def _empty(self, params: bytes) -> bytes:
        return b""

    def _set_parameters(self, params: bytes) -> bytes:
        if params:
            self._parameters = params[0]
        return b""

    def _power_down(self, params: bytes) -> bytes:
        self._field(False)
        return bytes([STATUS_OK])

    def _rf_configuration(self, params: bytes) -> bytes:
        if params[:1] == b"\x01" and len(params) >= 2:
            self._field(bool(params[1] & 0x01))
        elif params[:1] == b"\x02" and len(params) >= 4:
            index = params[3]
            self._rf_timeout = None if index == 0 else 100e-6 * (1 << (index - 1))
        return b""

    def _in_list_passive_target(self, params: bytes) -> bytes:
        if len(params) < 2:
            return b"\x00"
        self._release_target()
        self._field(True)
        brty, initiator = params[1], params[2:]
        found: bytes | None = None
        if brty == 0x00:
            found = self._find_type_a(initiator)
        elif brty == 0x03:
            found = self._find_type_b(initiator[0] if initiator else 0x00)
        if found is None:
            return b"\x00"
        self._target = True
        return bytes([1, 1]) + found

    def _in_data_exchange(self, params: bytes) -> bytes:
        if not params or not self._target:
            return bytes([STATUS_BAD_CONTEXT])
        more, data = bool(params[0] & 0x40), params[1:]
        if not self._firmware_iso_dep:
            answer = self._rf(data, self._rf_timeout)  # not ISO-DEP: frames go as they are
            return bytes([STATUS_TIMEOUT]) if answer is None else bytes([STATUS_OK]) + answer
        if not data and self._response_rest:
            chunk, self._response_rest = self._response_rest[:MAX_DATA], self._response_rest[MAX_DATA:]
            return bytes([0x40 if self._response_rest else STATUS_OK]) + chunk
        self._host_chain += data
        if more:
            return bytes([STATUS_OK])
        apdu = bytes(self._host_chain)
        self._host_chain.clear()
        response = self._iso_dep_exchange(apdu)
        if response is None:
            return bytes([STATUS_TIMEOUT])
        chunk, self._response_rest = response[:MAX_DATA], response[MAX_DATA:]
        return bytes([0x40 if self._response_rest else STATUS_OK]) + chunk

    def _in_communicate_thru(self, params: bytes) -> bytes:
        answer = self._rf(params, self._rf_timeout)
        if answer is None:
            return bytes([STATUS_TIMEOUT])
        return bytes([STATUS_OK]) + answer

    def _deselect(self) -> None:
        if self._firmware_iso_dep:
            answer = self._iso_dep_block(0xC2, b"")
            if answer is None:
                _log.debug("pn532_sim_deselect_unanswered")
            self._firmware_iso_dep = False

    def _in_deselect(self, params: bytes) -> bytes:
        self._deselect()
        return bytes([STATUS_OK])

    def _in_release(self, params: bytes) -> bytes:
        self._deselect()
        self._release_target()
        return bytes([STATUS_OK])

    def _in_select(self, params: bytes) -> bytes:
        return bytes([STATUS_OK if self._target else STATUS_BAD_CONTEXT])

    def _no_dep_target(self, params: bytes) -> bytes:
        return bytes([STATUS_TIMEOUT])

    def _in_auto_poll(self, params: bytes) -> bytes:
        return b"\x00"

    _HANDLERS: ClassVar[dict[int, Callable[[Pn532Simulator, bytes], bytes]]] = {
        0x00: _diagnose,
        0x02: _firmware,
        0x04: _general_status,
        0x06: _read_register,
        0x08: _write_register,
        0x0C: _read_gpio,
        0x0E: _empty,
        0x10: _empty,  # SetSerialBaudRate: a pty has no speed
        0x12: _set_parameters,
        0x14: _empty,  # SAMConfiguration
        0x16: _power_down,
        0x32: _rf_configuration,
        0x40: _in_data_exchange,
        0x42: _in_communicate_thru,
        0x44: _in_deselect,
        0x46: _no_dep_target,  # InJumpForPSL
        0x4A: _in_list_passive_target,
        0x4E: _no_dep_target,  # InPSL
        0x50: _no_dep_target,  # InATR
        0x52: _in_release,
        0x54: _in_select,
        0x56: _no_dep_target,  # InJumpForDEP
        0x60: _in_auto_poll,
    }


def _payload_bounds(buf: bytearray) -> tuple[int, int] | None:
    """(header size, payload length) of a normal or extended information frame.

    None when more bytes are needed; a length of -1 when the length checksum is wrong.
    """
    length, check = buf[1], buf[2]
    if (length, check) == (0xFF, 0xFF):
        if len(buf) < 6:
            return None
        if (buf[3] + buf[4] + buf[5]) & 0xFF:
            return 6, -1
        return 6, buf[3] << 8 | buf[4]
    if (length + check) & 0xFF:
        return 3, -1
    return 3, length
