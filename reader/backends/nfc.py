"""NFC readers through nfcpy: USB readers, a PN532 on a UART, and the udp driver used by tests.

Paths (`NfcReader(path)`):

* `usb`, `usb:VID:PID`, `usb:BUS:DEV`: nfcpy's USB drivers (libusb).
* `tty:USB0:pn532`, `tty:AMA0:pn532`, `tty:NAME:pn532`: nfcpy's serial path, where NAME is a tty
  directly under /dev (nfcpy's parser accepts nothing else, readers.md §2.4).
* `tty:/dev/pts/3:pn532` (any absolute device path, any nfcpy serial driver): opened here with
  nfcpy's TTY transport and driver `init`, the route nfcpy's parser cannot express.
* `udp:HOST:PORT`: nfcpy's udp driver (`sscard_sim.nfc_udp` is the card at the other end).

Cards are ISO-DEP only (Type 4A and 4B); APDUs go through `tag.transceive`. What the errors
mean:

* `TransmitTimeout`: the card is still in the field (it answers a presence check) but did not
  answer the command in time. The channel is then spent: a late answer could be taken for the
  answer to the next command, so it refuses further commands.
* `CardRemoved`: the link is gone: RFOFF on udp, a timeout after which the card no longer
  answers a presence check, a broken ISO-DEP exchange. A card that stops answering altogether
  cannot be told apart from one that left, on any RF hardware; it reads as removed.
* `ReaderUnavailable`: the device cannot be opened or stopped answering (unplugged). A busy USB
  device is explained: held by the pn533_usb kernel module, or by pcscd, and what to do.

A `transmit` deadline bounds a card that never answers: nfcpy waits per frame and retries with
R(NAK) up to `min(int(1 / FWT), 5)` times, so each frame gets the deadline divided by the tries.

Waiting for a card on udp: with no card, nfcpy spends 1 s per technology in `sense()`. A wait
that times out or is cancelled during a sense ends it at once by sending the udp driver's own
RFOFF datagram to the reader socket from this process (nfcpy then drops that sense).
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from operator import xor
from pathlib import Path
from typing import Any

import nfc
import nfc.clf
import nfc.clf.device
import nfc.clf.pn53x
import nfc.clf.transport
import nfc.tag
import nfc.tag.tt4

from reader.backends.base import (
    CardRemoved,
    ReaderKind,
    ReaderUnavailable,
    TransmitTimeout,
    WaitCancelled,
    cancel_hook,
)
from reader.log import get_logger

DEFAULT_TARGETS = ("106A", "106B")
FSC_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)
_TTY_DEVICE_PATH = re.compile(r"^(?:tty|com):(/[^:]+):([a-z0-9]+)$")
# The device itself failed: I/O errors, and PN53x chips answering with an error frame.
_DEVICE_ERRORS = (OSError, nfc.clf.pn53x.Chipset.Error)

_log = get_logger(component="nfc")


def pcsc_atr(historical: bytes) -> bytes:
    """The PC/SC part 3 ATR of a contactless ISO 14443-4 card: 3B 8n 80 01 <historical> TCK."""
    if len(historical) > 15:
        historical = historical[:15]
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    return bytes([0x3B]) + body + bytes([reduce(xor, body, 0)])


def ats_historical_bytes(ats: bytes) -> bytes:
    """The historical bytes of an ATS (TL T0 [TA] [TB] [TC] historical...)."""
    if len(ats) < 2:
        return b""
    end = min(ats[0], len(ats))
    start = 2 + (ats[1] & 0x70).bit_count()
    return bytes(ats[start:end])


def _frame_wait(fwi: int) -> float:
    return 4096 / 13.56e6 * (1 << fwi)


# -- USB diagnosis ----------------------------------------------------------------------


@dataclass(frozen=True)
class UsbHolder:
    """Who holds one nfcpy-supported USB reader."""

    vid: int
    pid: int
    bus: int
    dev: int
    driver: str | None  # kernel driver bound to interface 0 ("pn533_usb", "usbfs"), or None
    processes: tuple[str, ...]  # "pcscd (pid 812)" for processes holding the device node

    def explain(self) -> str:
        where = f"USB reader {self.vid:04x}:{self.pid:04x} (bus {self.bus:03d} device {self.dev:03d})"
        if self.driver and self.driver.startswith("pn533"):
            return (
                f"{where} is held by the {self.driver} kernel module: unload it "
                "(modprobe -r pn533_usb pn533 nfc) and blacklist it "
                "(a line 'blacklist pn533_usb' in /etc/modprobe.d/nfc-blacklist.conf)"
            )
        if any(process.startswith("pcscd ") for process in self.processes):
            return (
                f"{where} is held by pcscd ({', '.join(self.processes)}): a reader is driven by pcscd or "
                "by nfcpy, never both; stop pcscd (systemctl stop pcscd.socket pcscd.service) "
                "or use the reader through the PC/SC backend"
            )
        if self.processes:
            return f"{where} is held by {', '.join(self.processes)}"
        if self.driver == "usbfs":
            return (
                f"{where} is claimed by a program through libusb (often pcscd with libccid: "
                "systemctl stop pcscd.socket pcscd.service)"
            )
        if self.driver:
            return f"{where} is bound to the {self.driver} kernel driver"
        return f"{where} is present and not claimed by any driver"


def usb_holders(
    vid_pid: tuple[int, int] | None = None,
    sysfs: Path = Path("/sys"),
    proc: Path = Path("/proc"),
) -> list[UsbHolder]:
    """The nfcpy-supported USB readers on this machine and who holds each (sysfs and /proc only)."""
    holders: list[UsbHolder] = []
    devices = sysfs / "bus" / "usb" / "devices"
    if not devices.is_dir():
        return holders
    for entry in sorted(devices.iterdir()):
        try:
            vid = int((entry / "idVendor").read_text().strip(), 16)
            pid = int((entry / "idProduct").read_text().strip(), 16)
            bus = int((entry / "busnum").read_text().strip())
            dev = int((entry / "devnum").read_text().strip())
        except (OSError, ValueError):
            continue
        if (vid, pid) not in nfc.clf.device.usb_device_map:
            continue
        if vid_pid is not None and (vid, pid) != vid_pid:
            continue
        driver_link = devices / f"{entry.name}:1.0" / "driver"
        driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else None
        holders.append(UsbHolder(vid, pid, bus, dev, driver, _processes_holding(bus, dev, proc)))
    return holders


def _processes_holding(bus: int, dev: int, proc: Path) -> tuple[str, ...]:
    node = f"/dev/bus/usb/{bus:03d}/{dev:03d}"
    found: list[str] = []
    try:
        pids = [entry for entry in proc.iterdir() if entry.name.isdigit()]
    except OSError:
        return ()
    for pid_dir in pids:
        try:
            targets = [os.readlink(fd) for fd in (pid_dir / "fd").iterdir()]
            if node in targets:
                found.append(f"{(pid_dir / 'comm').read_text().strip()} (pid {pid_dir.name})")
        except OSError:
            continue  # gone, or not ours to look at
    return tuple(found)


def _explain_usb(path: str, error: OSError | None) -> str:
    match = re.match(r"^usb:([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$", path)
    vid_pid = (int(match.group(1), 16), int(match.group(2), 16)) if match else None
    holders = usb_holders(vid_pid)
    if error is not None and error.errno == errno.EACCES:
        nodes = ", ".join(f"/dev/bus/usb/{h.bus:03d}/{h.dev:03d}" for h in holders) or "the device node"
        return f"permission denied on {nodes}: run as root or add a udev rule for the reader"
    busy = [holder for holder in holders if holder.driver or holder.processes]
    if busy:
        return "; ".join(holder.explain() for holder in busy)
    if error is not None and error.errno == errno.EBUSY:
        return (
            f"USB device {path} is busy: it is held by pcscd or by the pn533_usb kernel module "
            "(stop pcscd, or run modprobe -r pn533_usb pn533 and blacklist pn533_usb)"
        )
    if holders:
        return f"found {len(holders)} supported USB reader(s) on {path} but none could be opened"
    supported = ", ".join(f"{vid:04x}:{pid:04x}" for vid, pid in sorted(nfc.clf.device.usb_device_map))
    return f"no nfcpy-supported USB reader on {path} (supported: {supported})"


def _explain_tty(path: str, error: OSError | None) -> str:
    if error is not None and error.errno == errno.EACCES:
        return f"permission denied on the serial port of {path} (add the user to the dialout group)"
    if error is not None and error.errno in (errno.ENOENT, errno.ENXIO):
        return f"the serial port of {path} does not exist"
    port = path.split(":")[1] if path.count(":") >= 1 else path
    device = port if port.startswith("/") else f"/dev/tty{port} (or /dev/{port})"
    return (
        f"no reader answered on {path}: check that {device} is the reader's UART, that a PN532 "
        "is in HSU mode, and that no other program uses the port"
    )


# -- the frontend ----------------------------------------------------------------------


class _Frontend(nfc.ContactlessFrontend):  # type: ignore[misc]
    """nfcpy's frontend, keeping the activation answers nfcpy reads and then drops.

    The ATS (answer to RATS, E0) and the ATTRIB answer (1D) give the PC/SC part 3 ATR and
    the card's frame waiting time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recording = False
        self.activation: dict[int, bytes] = {}

    def exchange(self, send_data: Any, timeout: float) -> Any:
        data = super().exchange(send_data, timeout)
        if self.recording and send_data and send_data[0] in (0xE0, 0x1D) and data is not None:
            self.activation[send_data[0]] = bytes(data)
        return data


# -- channel ---------------------------------------------------------------------------


class NfcChannel:
    """An activated ISO-DEP card (Type 4A or 4B) on one NFC reader."""

    def __init__(
        self,
        reader: NfcReader,
        tag: Any,
        technology: str,
        atr: bytes,
        fwi: int,
    ) -> None:
        self._reader = reader
        self._tag = tag
        self.technology = technology  # "A" or "B"
        self._atr = atr
        self._uid = bytes(tag.identifier)
        self._fwt = _frame_wait(fwi)
        self._tries = min(int(1 / self._fwt), 5) + 1
        self._closed = False
        self._spent = False
        self._lost = False

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def uid(self) -> bytes | None:
        return self._uid

    @property
    def lost(self) -> bool:
        """The card is known to be gone (a CardRemoved was raised)."""
        return self._lost

    def transmit(self, apdu: bytes, timeout: float | None = None) -> bytes:
        """Send one command APDU; the answer is data + SW1 SW2."""
        name = self._reader.name
        if self._lost:
            raise CardRemoved(name, "the card left the field")
        if self._closed:
            raise CardRemoved(name, "the channel is closed")
        if self._spent:
            raise TransmitTimeout(name, "an earlier command timed out; the card must be activated again")
        deadline = self._reader.transmit_timeout if timeout is None else timeout
        per_frame = max(deadline / self._tries, 0.001)
        try:
            response = self._tag.transceive(bytearray(apdu), per_frame)
        except nfc.clf.BrokenLinkError as error:
            raise self._removed("link lost (field switched off)") from error
        except nfc.tag.tt4.Type4TagCommandError as error:
            if error.errno != nfc.tag.TIMEOUT_ERROR:
                raise self._removed(f"ISO-DEP exchange broken: {error}") from error
            if not self.is_present():
                raise self._removed("no answer, and the card no longer answers presence checks") from error
            self._spent = True
            raise TransmitTimeout(name, f"no answer within {deadline:.3f} s (card still in the field)") from error
        except nfc.clf.CommunicationError as error:
            raise self._removed(f"communication error: {error}") from error
        except _DEVICE_ERRORS as error:
            self._reader._device_failed(error)
            raise ReaderUnavailable(name, f"reader failed during an exchange: {error}") from error
        if response is None or len(response) < 2:
            raise self._removed("empty response")
        return bytes(response)

    def is_present(self) -> bool:
        """One ISO-DEP presence check (R(NAK), answered by R(ACK) while the card is there)."""
        if self._lost:
            return False
        try:
            present = bool(self._tag.is_present)
        except _DEVICE_ERRORS as error:
            self._reader._device_failed(error)
            raise ReaderUnavailable(self._reader.name, f"reader failed during a presence check: {error}") from error
        if not present:
            self._lost = True
        return present

    def close(self) -> None:
        """No more commands on this channel; the card stays activated for presence checks."""
        self._closed = True

    def _removed(self, why: str) -> CardRemoved:
        self._lost = True
        return CardRemoved(self._reader.name, why)


# -- reader ----------------------------------------------------------------------------


class NfcReader:
    """One nfcpy device; opened on first use and again after it failed."""

    def __init__(
        self,
        path: str,
        name: str | None = None,
        *,
        kind: ReaderKind = ReaderKind.CONTACTLESS,
        targets: Sequence[str] = DEFAULT_TARGETS,
        transmit_timeout: float = 2.0,
        poll_interval: float = 0.1,
        presence_interval: float = 0.1,
    ) -> None:
        for target in targets:
            if target not in ("106A", "106B", "212B", "424B", "848B"):
                raise ValueError(f"{target!r} is not an ISO-DEP technology (106A, 106B...)")
        tty_path = _TTY_DEVICE_PATH.match(path)
        if tty_path is not None and tty_path.group(2) not in nfc.clf.device.tty_driver_list:
            raise ValueError(f"{tty_path.group(2)!r} is not an nfcpy serial driver {nfc.clf.device.tty_driver_list}")
        self.path = path
        self._name = name or f"nfc:{path}"
        self._kind = kind
        self.targets = tuple(targets)
        self.transmit_timeout = transmit_timeout
        self.poll_interval = poll_interval
        self.presence_interval = presence_interval
        self._clf: _Frontend | None = None
        self._channel: NfcChannel | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._log = _log.bind(reader=self._name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> ReaderKind:
        return self._kind

    @property
    def device(self) -> str | None:
        """nfcpy's description of the open device ("... PN532v1.6 at /dev/pts/3"), None when closed."""
        clf = self._clf
        return str(clf.device) if clf is not None and clf.device is not None else None

    def open(self) -> None:
        """Open the device now (it is otherwise opened by the first wait); raises ReaderUnavailable."""
        with self._lock:
            self._ensure_open()

    def wait_for_card(self, timeout: float | None, cancel: threading.Event) -> NfcChannel | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._channel = None
            while True:
                for brty in self.targets:
                    self._check(cancel)
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    clf = self._ensure_open()
                    target = self._sense(clf, brty, deadline, cancel)
                    self._check(cancel)
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    if target is None:
                        continue
                    channel = self._activate(clf, target)
                    if channel is not None:
                        self._channel = channel
                        return channel
                pause = self.poll_interval
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                if cancel.wait(pause):
                    raise WaitCancelled(self._name, "wait for a card cancelled")

    def wait_for_removal(self, timeout: float | None, cancel: threading.Event) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            channel = self._channel
            if channel is None:
                return True
            while True:
                self._check(cancel)
                if not channel.is_present():
                    self._channel = None
                    self._log.debug("nfc_card_left")
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                pause = self.presence_interval
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                if cancel.wait(pause):
                    raise WaitCancelled(self._name, "wait for removal cancelled")

    def close(self) -> None:
        """Switch the field off and release the device."""
        with self._lock:
            self._closed = True
            self._channel = None
            self._close_device()

    # -- internals -----------------------------------------------------------------------

    def _check(self, cancel: threading.Event) -> None:
        if cancel.is_set():
            raise WaitCancelled(self._name, "wait cancelled")

    def _ensure_open(self) -> _Frontend:
        if self._closed:
            raise ReaderUnavailable(self._name, "the reader is closed")
        if self._clf is not None:
            return self._clf
        clf = _Frontend()
        tty_path = _TTY_DEVICE_PATH.match(self.path)
        try:
            if tty_path is not None:
                clf.device = self._open_tty_device(tty_path.group(1), tty_path.group(2))
                opened = True
            else:
                opened = clf.open(self.path)
        except OSError as error:
            raise ReaderUnavailable(self._name, self._explain(error)) from error
        except nfc.clf.pn53x.Chipset.Error as error:
            raise ReaderUnavailable(self._name, f"the reader chip refused its set-up: {error}") from error
        if not opened:
            raise ReaderUnavailable(self._name, self._explain(None))
        self._clf = clf
        self._log.info("nfc_reader_open", device=str(clf.device))
        return clf

    def _open_tty_device(self, device: str, driver_name: str) -> Any:
        driver = importlib.import_module(f"nfc.clf.{driver_name}")
        transport = nfc.clf.transport.TTY(device)
        try:
            opened = driver.init(transport)
        except _DEVICE_ERRORS:
            transport.close()
            raise
        opened._path = device
        return opened

    def _explain(self, error: OSError | None) -> str:
        if self.path.startswith("usb"):
            return _explain_usb(self.path, error)
        if self.path.startswith(("tty", "com")):
            return _explain_tty(self.path, error)
        return f"cannot open {self.path}: {error or 'no such device'}"

    def _device_failed(self, error: Exception) -> None:
        """The device stopped answering: drop it so that the next wait opens it again."""
        self._log.warning("nfc_reader_failed", error=str(error))
        self._channel = None
        self._close_device()

    def _close_device(self) -> None:
        clf, self._clf = self._clf, None
        if clf is not None:
            try:
                clf.close()
            except OSError as error:
                self._log.debug("nfc_reader_close_failed", error=str(error))

    def _sense(self, clf: _Frontend, brty: str, deadline: float | None, cancel: threading.Event) -> Any:
        target = nfc.clf.RemoteTarget(brty)
        try:
            if self.path.startswith("udp"):
                return self._sense_udp(clf, target, deadline, cancel)
            return clf.sense(target)
        except nfc.clf.UnsupportedTargetError:
            return None
        except _DEVICE_ERRORS as error:
            self._device_failed(error)
            raise ReaderUnavailable(self._name, f"reader failed while polling: {error}") from error

    def _sense_udp(self, clf: _Frontend, target: Any, deadline: float | None, cancel: threading.Event) -> Any:
        done = threading.Event()
        wake = threading.Event()

        def interrupt() -> None:
            """Poke the reader socket with RFOFF until the sense gives up (it may be between sockets)."""
            while not done.is_set():
                due = cancel.is_set() or (deadline is not None and time.monotonic() >= deadline)
                if due:
                    _poke_udp_reader(clf)
                    done.wait(0.02)
                    continue
                pause = 0.05 if deadline is None else min(0.05, max(0.0, deadline - time.monotonic()))
                wake.wait(pause)

        watcher = threading.Thread(target=interrupt, name=f"nfc-wake-{self._name}", daemon=True)
        with cancel_hook(cancel, wake.set):
            watcher.start()
            try:
                return clf.sense(target)
            finally:
                done.set()
                wake.set()
                watcher.join()

    def _activate(self, clf: _Frontend, target: Any) -> NfcChannel | None:
        clf.activation.clear()
        clf.recording = True
        try:
            tag = nfc.tag.activate(clf, target)
        except _DEVICE_ERRORS as error:
            self._device_failed(error)
            raise ReaderUnavailable(self._name, f"reader failed during activation: {error}") from error
        except IndexError as error:  # nfcpy reads the ATS without checking its length
            self._log.info("nfc_activation_failed", brty=target.brty, error=f"malformed answer: {error}")
            return None
        finally:
            clf.recording = False
        if tag is None:
            self._log.info("nfc_activation_failed", brty=target.brty)
            return None
        if not isinstance(tag, nfc.tag.tt4.Type4Tag):
            self._log.info("nfc_card_not_iso_dep", brty=target.brty, type=type(tag).__name__)
            return None
        if target.brty.endswith("A"):
            ats = clf.activation.get(0xE0, b"")
            atr = pcsc_atr(ats_historical_bytes(ats))
            fwi = ats[3] >> 4 if len(ats) > 3 else 4  # where nfcpy reads it (it assumes TA is present)
            technology = "A"
        else:
            atqb = bytes(target.sensb_res)
            attrib = clf.activation.get(0x1D, b"\x00")
            atr = pcsc_atr(atqb[5:12] + bytes([attrib[0] & 0xF0 if attrib else 0]))
            fwi = atqb[11] >> 4 if len(atqb) > 11 else 4
            technology = "B"
        fwi = fwi if fwi <= 14 else 4
        self._log.info("nfc_card_activated", technology=technology, atr=atr.hex().upper())
        return NfcChannel(self, tag, technology, atr, fwi)


def _poke_udp_reader(clf: _Frontend) -> None:
    device = clf.device
    sock = getattr(device, "socket", None)
    if sock is None:
        return
    try:
        port = sock.getsockname()[1]
    except OSError:
        return  # closed between two senses
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poke:
        poke.sendto(b"RFOFF", ("127.0.0.1", port))
