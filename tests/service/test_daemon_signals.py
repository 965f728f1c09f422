"""`sscard run` as systemd runs it: a real process on the bench, told what to do by signals.

The daemon runs as a subprocess against the private pcscd with the vpcd readers; the test
holds the virtual PSAM (slot 1) and presents virtual cards (slot 0), and binds the
$NOTIFY_SOCKET stand-in that receives READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 with the
sender's PID, as the manager would. What the terminal recorded is read from its queue file
once it has exited.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reader.backends.base import CardSide
from reader.daemon.journal import Journal
from reader.daemon.record import card_token
from reader.uplink.hotlist import encode_hotlist
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from sscard_sim.card import VirtualCard
from sscard_sim.pcscd import VPCD_PORTS, PcscdBench, wait_for_presence
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT0, SLOT1

SSCARD = Path(sys.executable).with_name("sscard")
INS_DEBIT = 0x54
STOP_BOUND_S = 20.0
"""TimeoutStopSec= of the unit: systemd kills a daemon that takes longer to stop."""
WATCHDOG_USEC = 600_000
STATUS_LINE = re.compile(r"^(in service|out of service); readers \d+/\d+; queue (\d+); hotlist (\S+)$")
_UCRED = struct.Struct("iII")


# ---------------------------------------------------------------------- the manager's socket


@dataclass
class Notification:
    fields: dict[str, str]
    pid: int


@dataclass
class Manager:
    """$NOTIFY_SOCKET: collects every datagram with the PID the kernel vouches for."""

    path: Path
    received: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.cond = threading.Condition()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closed.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pids = [
                _UCRED.unpack(payload[: _UCRED.size])[0]
                for level, kind, payload in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            ]
            lines = data.decode().split("\n")
            assert all("=" in line for line in lines), f"not KEY=VALUE lines: {data!r}"
            fields = dict(line.split("=", 1) for line in lines)
            with self.cond:
                self.received.append(Notification(fields, pids[0] if pids else -1))
                self.cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], after: int = 0, timeout: float = 15.0) -> int:
        """Index of the first notification from `after` on that satisfies `predicate`."""

        def found() -> int | None:
            return next((i for i in range(after, len(self.received)) if predicate(self.received[i].fields)), None)

        with self.cond:
            self.cond.wait_for(lambda: found() is not None, timeout)
            index = found()
        assert index is not None, f"no such notification; got {[n.fields for n in self.received[after:]]}"
        return index

    def close(self) -> None:
        self.closed.set()
        self.thread.join(2)
        self.sock.close()


# ---------------------------------------------------------------------- the terminal


@dataclass
class Terminal:
    """A bus validator configuration in a state directory, and the daemon process running it."""

    state: Path
    manager: Manager
    fare: int = 200
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.key_file = self.state / "token.key"
        self.key_file.write_text(secrets.token_hex(32) + "\n")
        self.config = self.state / "bus.toml"
        self.log = self.state / "daemon.log"
        self.write_config()

    @property
    def token_key(self) -> bytes:
        return self.key_file.read_bytes().rstrip(b"\n")

    def write_config(self, max_taps: int = 1000) -> None:
        self.config.write_text(
            f"""
[terminal]
id = "TEST-BUS-01"
profile = "bus"
state_dir = "{self.state}"
token_key = "file:{self.key_file}"

[bus]
line = "812"
fare = {self.fare}
accepted_regions = ["51", "50"]
passback_seconds = 0

[readers.pcsc]
contactless = "virtual pcd 00 00"
sam = "virtual pcd 00 01"
transmit_timeout = 10.0

[queue]
max_taps = {max_taps}
""",
            encoding="utf-8",
        )

    def start(self) -> int:
        """Start `sscard run`; returns the index of its READY=1 notification."""
        env = dict(os.environ, NOTIFY_SOCKET=str(self.manager.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
        env.pop("WATCHDOG_PID", None)
        env.pop("CREDENTIALS_DIRECTORY", None)
        seen = len(self.manager.received)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SSCARD), "--log-level", "info", "run", "--config", str(self.config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        ready = self.manager.wait_for(lambda f: f.get("READY") == "1", after=seen)
        assert self.manager.received[ready].pid == self.process.pid, "READY=1 must come from the main process"
        return ready

    def send(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait_exit(self) -> int:
        assert self.process is not None
        return self.process.wait(timeout=STOP_BOUND_S)

    def events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines."""
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def taps(self) -> list[dict[str, Any]]:
        """What the queue file holds, once the daemon has exited."""
        with TapQueue(QueueSettings(path=self.state / "queue.sqlite3")) as queue:
            return [tap.record() for tap in queue.iter_taps()]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def terminal(pcscd: PcscdBench, tmp_path: Path) -> Iterator[Terminal]:
    """A terminal with its PSAM in slot 1; the daemon is started by the test."""
    manager = Manager(tmp_path / "notify")
    psam = VpcdLink(VirtualPsam.from_profile("demo-psam", tmp_path / "psam.json"), port=VPCD_PORTS[SLOT1])
    psam.insert()
    assert wait_for_presence(SLOT1, present=True), "pcscd never saw the PSAM"
    state = tmp_path / "state"
    state.mkdir()
    term = Terminal(state, manager)
    yield term
    term.kill()
    psam.remove()
    wait_for_presence(SLOT1, present=False)
    manager.close()


@contextmanager
def presented(card: CardSide) -> Iterator[VpcdLink]:
    """A card held on the contactless reader, then taken away."""
    link = VpcdLink(card, port=VPCD_PORTS[SLOT0])
    link.insert()
    try:
        yield link
    finally:
        link.remove()
        wait_for_presence(SLOT0, present=False)


class HeldDebit:
    """A card that holds DEBIT FOR PURCHASE until released: a debit caught half-way."""

    def __init__(self, card: VirtualCard) -> None:
        self.card = card
        self.debit_started = threading.Event()
        self.release = threading.Event()

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def atr(self) -> bytes:
        return self.card.atr()

    def transmit(self, apdu: bytes) -> bytes:
        if len(apdu) > 1 and apdu[1] == INS_DEBIT:
            self.debit_started.set()
            self.release.wait(STOP_BOUND_S)
        return self.card.transmit(apdu)


def queue_depth(fields: dict[str, str]) -> int | None:
    match = STATUS_LINE.match(fields.get("STATUS", ""))
    return int(match.group(2)) if match else None


# ---------------------------------------------------------------------- the tests


def test_ready_watchdog_status_and_sigterm_when_idle(terminal: Terminal) -> None:
    manager = terminal.manager
    ready = terminal.start()
    assert terminal.process is not None
    assert STATUS_LINE.match(manager.received[ready].fields["STATUS"]), manager.received[ready].fields
    assert "readers 1/1; queue 0; hotlist none" in manager.received[ready].fields["STATUS"]

    # The main loop keeps the watchdog fed while the reader worker lives.
    index = ready
    for _ in range(3):
        index = manager.wait_for(lambda f: f.get("WATCHDOG") == "1", after=index + 1)
    terminal.send(signal.SIGTERM)
    stopping = manager.wait_for(lambda f: f.get("STOPPING") == "1", after=index + 1)
    assert terminal.wait_exit() == 0

    received = manager.received
    assert {n.pid for n in received} == {terminal.process.pid}
    statuses = [n.fields["STATUS"] for n in received if "STATUS" in n.fields]
    assert len(statuses) >= 3 and all(STATUS_LINE.match(status) for status in statuses), statuses
    assert not any("WATCHDOG" in n.fields for n in received[stopping + 1 :])
    assert not any("WATCHDOG" in n.fields or "READY" in n.fields for n in received[:ready])

    events = [event["event"] for event in terminal.events()]
    assert "Traceback" not in terminal.log.read_text(encoding="utf-8")
    # READY once the PSAM channel is open and the queue checked (the queue opens first).
    assert events.index("sam_channel_opened") < events.index("daemon_ready")
    assert events[-1] == "daemon_stopped"
    assert terminal.taps() == []


def test_sigterm_during_a_debit_finishes_and_records_it(terminal: Terminal, tmp_path: Path) -> None:
    manager = terminal.manager
    ready = terminal.start()
    card = HeldDebit(VirtualCard.from_profile("sichuan", state_path=tmp_path / "sichuan.json"))
    with presented(card):
        assert card.debit_started.wait(15), "the daemon never sent DEBIT FOR PURCHASE"
        terminal.send(signal.SIGTERM)
        # The daemon has begun to stop while the card still holds the debit...
        manager.wait_for(lambda f: f.get("STOPPING") == "1", after=ready + 1)
        assert terminal.process is not None and terminal.process.poll() is None
        card.release.set()
        # ... and finishes the tap before it exits.
        assert terminal.wait_exit() == 0

    taps = terminal.taps()
    assert len(taps) == 1, taps
    tap = taps[0]
    assert (tap["result"], tap["reason"], tap["fare"]) == ("accepted", "ok", 200)
    assert (tap["balance_before"], tap["balance_after"]) == (5000, 4800)
    assert tap["mac2_verified"] is True and tap["tac"]
    assert card.card.memory.balance == 4800, "the card was debited once"
    with TapQueue(QueueSettings(path=terminal.state / "queue.sqlite3")) as queue:
        journal = Journal(queue, terminal.token_key)
        assert journal.all_pending() == [], "no debit is left half-way in the journal"
    assert "Traceback" not in terminal.log.read_text(encoding="utf-8")


def test_sighup_reloads_the_hotlist_and_the_fare(terminal: Terminal, tmp_path: Path) -> None:
    manager = terminal.manager
    ready = terminal.start()
    sichuan = VirtualCard.from_profile("sichuan", state_path=tmp_path / "sichuan.json")
    chongqing = VirtualCard.from_profile("chongqing", state_path=tmp_path / "chongqing.json")
    with presented(sichuan):
        first = manager.wait_for(lambda f: queue_depth(f) == 1, after=ready)

    # The back office lists the Sichuan card, and the fare changes: both land on disk, then SIGHUP.
    token = card_token(terminal.token_key, sichuan.profile.ssse.card_number)
    document = encode_hotlist(2, [bytes.fromhex(token)])
    staging = terminal.state / "hotlist.new"
    staging.write_bytes(document)
    os.replace(staging, terminal.state / "hotlist.bin")
    terminal.fare = 150
    terminal.write_config(max_taps=2000)
    terminal.send(signal.SIGHUP)
    reloading = manager.wait_for(lambda f: f.get("RELOADING") == "1", after=first)
    reloaded = manager.wait_for(lambda f: f.get("READY") == "1", after=reloading)
    assert manager.received[reloaded].fields["STATUS"].endswith("hotlist 2")

    with presented(sichuan):
        second = manager.wait_for(lambda f: queue_depth(f) == 2, after=reloaded)
    with presented(chongqing):
        manager.wait_for(lambda f: queue_depth(f) == 3, after=second)
    terminal.send(signal.SIGTERM)
    assert terminal.wait_exit() == 0

    before, hotlisted, charged = terminal.taps()
    assert (before["result"], before["fare"], before["hotlist_version"]) == ("accepted", 200, None)
    assert (hotlisted["result"], hotlisted["reason"], hotlisted["hotlist_version"]) == ("denied", "hotlisted", "2")
    assert hotlisted["card_token"] == token and hotlisted["balance_after"] is None
    assert (charged["result"], charged["fare"]) == ("accepted", 150)
    assert charged["balance_after"] == charged["balance_before"] - 150
    assert chongqing.memory.balance == 2000 - 150, "the new fare was charged to the card"
    assert sichuan.memory.balance == 5000 - 200
    # The queue bound needs a restart: noted, and the running value kept.
    notes = [event for event in terminal.events() if event["event"] == "reload_needs_restart"]
    assert [note["sections"] for note in notes] == [["queue"]]
