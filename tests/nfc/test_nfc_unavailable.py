"""A reader that cannot be opened names the cause: busy USB device, nothing plugged, bad path.

The busy-device cases need a reader held by pcscd or by the pn533_usb module, which no test
machine has; the diagnosis reads only sysfs and /proc, so those trees are laid out here the
way the kernel shows them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from reader.backends.base import ReaderUnavailable
from reader.backends.nfc import NfcReader, usb_holders


def plug(sysfs: Path, port: str, vid: str, pid: str, bus: int, dev: int, driver: str | None) -> None:
    """One USB device under <sysfs>/bus/usb/devices, its interface 0 bound to `driver`."""
    devices = sysfs / "bus" / "usb" / "devices"
    device = devices / port
    device.mkdir(parents=True)
    for name, value in (("idVendor", vid), ("idProduct", pid), ("busnum", str(bus)), ("devnum", str(dev))):
        (device / name).write_text(value + "\n")
    interface = devices / f"{port}:1.0"
    interface.mkdir()
    if driver is not None:
        target = sysfs / "bus" / "usb" / "drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        (interface / "driver").symlink_to(target)


def hold(proc: Path, pid: int, comm: str, node: str) -> None:
    """A process <pid> named <comm> with `node` open."""
    fds = proc / str(pid) / "fd"
    fds.mkdir(parents=True)
    (proc / str(pid) / "comm").write_text(comm + "\n")
    (fds / "7").symlink_to(node)


def test_reader_held_by_the_kernel_module(tmp_path: Path) -> None:
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    proc.mkdir()
    plug(sysfs, "1-1", "072f", "2200", 1, 4, "pn533_usb")
    plug(sysfs, "1-2", "046d", "c52b", 1, 5, "usbhid")  # a mouse: not an NFC reader
    [holder] = usb_holders(sysfs=sysfs, proc=proc)
    assert (holder.vid, holder.pid, holder.bus, holder.dev, holder.driver) == (0x072F, 0x2200, 1, 4, "pn533_usb")
    text = holder.explain()
    assert "pn533_usb kernel module" in text
    assert "modprobe -r pn533_usb" in text
    assert "blacklist pn533_usb" in text


def test_reader_held_by_pcscd(tmp_path: Path) -> None:
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    plug(sysfs, "3-1", "072f", "2200", 3, 9, "usbfs")
    hold(proc, 812, "pcscd", "/dev/bus/usb/003/009")
    hold(proc, 900, "bash", "/dev/pts/1")
    [holder] = usb_holders((0x072F, 0x2200), sysfs=sysfs, proc=proc)
    assert holder.processes == ("pcscd (pid 812)",)
    text = holder.explain()
    assert "held by pcscd (pcscd (pid 812))" in text
    assert "systemctl stop pcscd.socket pcscd.service" in text


def test_other_vid_pid_is_not_reported(tmp_path: Path) -> None:
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    proc.mkdir()
    plug(sysfs, "1-1", "054c", "06c3", 1, 2, None)
    assert usb_holders((0x072F, 0x2200), sysfs=sysfs, proc=proc) == []
    [holder] = usb_holders(sysfs=sysfs, proc=proc)
    assert "not claimed" in holder.explain()


@pytest.mark.skipif(Path("/sys/bus/usb/devices").is_dir(), reason="this machine has a USB bus")
def test_no_usb_reader_is_reader_unavailable() -> None:
    reader = NfcReader("usb:072f:2200")
    with pytest.raises(ReaderUnavailable, match="no nfcpy-supported USB reader on usb:072f:2200"):
        reader.wait_for_card(0.1, threading.Event())
    reader.close()


def test_missing_serial_port_is_reader_unavailable() -> None:
    reader = NfcReader(f"tty:/dev/nonexistent-pn532-{os.getpid()}:pn532")
    with pytest.raises(ReaderUnavailable, match="does not exist"):
        reader.open()


def test_non_iso_dep_technology_is_refused() -> None:
    with pytest.raises(ValueError, match="not an ISO-DEP technology"):
        NfcReader("udp", targets=("212F",))
