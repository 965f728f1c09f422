"""The crash-point and fault matrix of the bus purchase, and the random-kill run.

Every case runs a real `sscard run` process on the vpcd bench (pcscd with the two vpcd
readers): the virtual card and the virtual PSAM live in this process, each behind a
`FaultyChip` (sscard_sim/faults.py), so their memory (purse balance, transaction counter,
log) survives every death of the daemon and is the judge of what happened. A case is one
fault at one command of a bus tap, or one crash point of the pipeline; then, where the
daemon died, a restart as systemd would do it; then the card's return, or its absence past
the tearing window. The verdict compares the card's own state with the terminal's records:

- every debit on the card has exactly one record that claims it (accepted, or unconfirmed
  when the card never came back): none is `lost`, none is counted twice (`double`);
- no accepted or unconfirmed record claims money the card did not pay (counted as `double`:
  the records claim more than the card paid);
- no denied record for a tap in which the card paid;
- no debit left pending in the journal at the end;
- a card that comes back (or taps without a fault) has paid exactly once: "tap again" and
  "already paid" between them leave one ride paid, whatever the fault was;
- after every restart the daemon reports READY within 5 s, and it never dies of itself
  (a daemon that exits on its own and again after the restart is a `crash loop`);
- no unhandled exception in its JSON log lines (a traceback, `exc_info`, `exception`).

Records and the journal are read from their files once the daemon has stopped. The matrix
is `POINTS x FAULTS` plus the crash points and a few named cases (`SPECIALS`); the normal
suite runs `SLICE` (test_fault_matrix.py), `python -m bench.crashtest` runs everything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from sscard_sim.card import VirtualCard
from sscard_sim.faults import Fault, FaultKind, FaultyChip, kill_and_wait
from sscard_sim.pcscd import VPCD_PORTS, VPCD_READERS, pcscd_is_serving, wait_for_presence
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink
from tests.daemon.bench import Purse, card_events

SSCARD = Path(sys.executable).with_name("sscard")
SLOT_CARD, SLOT_PSAM = VPCD_READERS
Side = Literal["card", "psam"]

READY_BOUND_S = 5.0
"""A restarted daemon must say READY=1 within this (the issue's bound)."""
FIRST_START_S = 30.0
"""The first start of a case may also pay for a cold import cache; it is not a restart."""
TAP_BOUND_S = 20.0
"""A tap that shows no end within this is a hang (reported, not waited for longer)."""
TRANSMIT_TIMEOUT_S = 1.0
"""[readers.pcsc] transmit_timeout of the matrix terminals; `late` answers after 1.5 times it."""
RETURN_WINDOW_S = 30.0
"""tearing_window_seconds when the card comes back: long enough for a restart and a return."""
GONE_WINDOW_S = 2.0
"""tearing_window_seconds when the card never comes back: the case waits a little past it."""
NO_RETURN = 3600.0
"""vpcd's redial delay for a card the case presents and removes by hand (it never redials)."""
FARE = 200
TAP_END_EVENTS = frozenset(
    {
        "card_processed",
        "card_removed_during_processing",
        "card_transmit_timeout",
        "card_processing_failed",
        "card_processing_crashed",
        "card_connect_failed",
    }
)
"""The reader loop's last word on a tap (reader/backends/loop.py), whatever its outcome."""

INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0
INS_READ_RECORD = 0xB2
INS_GET_BALANCE = 0x5C
INS_INITIALIZE = 0x50
INS_UPDATE_CAPP = 0xDC
INS_DEBIT = 0x54
INS_GET_CHALLENGE = 0x84
INS_EXTERNAL_AUTH = 0x82
INS_INTERNAL_AUTH = 0x88
INS_GET_RESPONSE = 0xC0
INS_PSAM_MAC1 = 0x70
INS_PSAM_MAC2 = 0x72


# ---------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Point:
    """One command of a bus tap: the `occurrence`-th command `ins` sent to `side`."""

    side: Side
    ins: int
    occurrence: int
    name: str

    @property
    def id(self) -> str:
        return f"{self.side}-{self.name}".replace(" ", "_")


FAULT_KINDS: tuple[FaultKind, ...] = (
    FaultKind.TEAR_BEFORE,
    FaultKind.TEAR_AFTER,
    FaultKind.ONE_BYTE,
    FaultKind.TRUNCATED,
    FaultKind.OVERLONG,
    FaultKind.STATUS,
    FaultKind.EXECUTED_STATUS,
    FaultKind.LATE,
)
"""Every fault kind of the matrix; `kill_terminal` is the `debit_sent` crash point instead."""

CRASH_POINTS = (
    "journal_written",
    "debit_sent",
    "debit_answered",
    "mac2_verified",
    "record_committed",
    "journal_cleared",
)
"""The pipeline's crash points (reader/daemon/crashpoints.py) in tap order, with `debit_sent`
(the card ran DEBIT, the daemon dies before its answer) made from the card side."""


@dataclass(frozen=True)
class Case:
    """One run: a fault at a point, or a crash point; then the card comes back, or never."""

    name: str
    returns: bool
    point: Point | None = None
    fault: Fault | None = None
    crash_at: str | None = None
    profile: str = "sichuan"
    own_balance: int | None = None
    """Set the purse's own money before the tap (below the fare: the overdraft is used)."""
    disk_full: bool = False
    """The state directory is a tiny tmpfs, filled up once the daemon is ready (min_free_bytes 0)."""
    fill_after_fault: bool = False
    """The tiny tmpfs fills up after the faulty tap, while the torn debit waits for its window."""

    @property
    def id(self) -> str:
        return f"{self.name}-{'returns' if self.returns else 'gone'}"

    @property
    def answer_unknown(self) -> bool:
        """Whether the terminal can not know if DEBIT ran: it died before sending it or before its
        answer, or the answer was lost, late or meaningless. Only the card's own refusal of MAC1
        (9302) is a definite "not debited"."""
        if self.crash_at == "journal_written":
            return True
        return (
            self.point is not None
            and self.point.ins == INS_DEBIT
            and self.point.side == "card"
            and self.fault is not None
            and not (self.fault.kind is FaultKind.STATUS and self.fault.sw == 0x9302)
        )

    @property
    def refuses_mac1(self) -> bool:
        """The card answers DEBIT with 9302: not genuine, refused again within the window, never paying."""
        return (
            self.point is not None
            and self.point.ins == INS_DEBIT
            and self.point.side == "card"
            and self.fault is not None
            and self.fault.kind is FaultKind.STATUS
            and self.fault.sw == 0x9302
        )

    @property
    def must_pay(self) -> bool:
        """A card that came back, or met no fault at all, rides once and pays once (a clone never does)."""
        if self.refuses_mac1:
            return False
        return self.returns or (self.fault is None and self.crash_at is None and not self.disk_full)

    @property
    def window(self) -> float:
        return RETURN_WINDOW_S if self.returns else GONE_WINDOW_S


def fault_for(kind: FaultKind, point: Point, sw: int = 0x6F00) -> Fault:
    return Fault(kind, ins=point.ins, occurrence=point.occurrence, sw=sw, delay=TRANSMIT_TIMEOUT_S * 1.5)


def fault_cases(points: tuple[Point, ...], returns: bool) -> list[Case]:
    return [
        Case(f"{point.id}-{kind.value}", returns, point=point, fault=fault_for(kind, point))
        for point in points
        for kind in FAULT_KINDS
    ]


def crash_cases(debit: Point, returns: bool) -> list[Case]:
    cases = []
    for name in CRASH_POINTS:
        if name == "debit_sent":
            cases.append(Case(f"crash-{name}", returns, point=debit, fault=fault_for(FaultKind.KILL_TERMINAL, debit)))
        else:
            cases.append(Case(f"crash-{name}", returns, crash_at=name))
    return cases


def special_cases(debit: Point, mac2: Point, returns: bool) -> list[Case]:
    """Named faults that the generic kinds do not make: a clone's MAC1, the PSAM refusing a MAC2
    after the card paid, the overdraft, a full disk."""
    return [
        Case("card-debit-status_9302", returns, point=debit, fault=fault_for(FaultKind.STATUS, debit, sw=0x9302)),
        Case("psam-mac2-status_9302", returns, point=mac2, fault=fault_for(FaultKind.STATUS, mac2, sw=0x9302)),
        Case("overdraft", returns, profile="chongqing", own_balance=100),
        Case("disk_full", returns, disk_full=True),
        *(
            ()
            if returns
            else (
                Case(
                    "disk_full_after_tear",
                    returns,
                    point=debit,
                    fault=fault_for(FaultKind.TEAR_AFTER, debit),
                    fill_after_fault=True,
                ),
            )
        ),
    ]


# ---------------------------------------------------------------------------- the terminal


def write_config(
    workdir: Path,
    *,
    window: float,
    fare: int = FARE,
    passback: int = 60,
    state_dir: Path | None = None,
    min_free_bytes: int | None = None,
) -> Path:
    """A bus validator with the rules of config/bus.toml (bands, transfer discount) on the bench.

    With the example's passback (60 s) a card that paid and comes back is "already paid", so a
    returning card pays exactly once; the random-kill run turns it off (`passback=0`) to be
    charged at every tap. The transmit deadline and the tearing window are short so that
    faults resolve quickly.
    """
    state = state_dir or workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    key = workdir / "token.key"
    key.write_text(secrets.token_hex(32) + "\n")
    queue = f'path = "{state / "queue.sqlite3"}"\n'
    if min_free_bytes is not None:
        queue += f"min_free_bytes = {min_free_bytes}\n"
    path = workdir / "bus.toml"
    path.write_text(
        f"""
[terminal]
id = "CRASH-BUS-01"
profile = "bus"
timezone = "Asia/Shanghai"
state_dir = "{state}"
token_key = "file:{key}"

[bus]
line = "812"
fare = {fare}
accepted_regions = ["51", "50"]
passback_seconds = {passback}
transfer_discount = 100
transfer_window_minutes = 90
tearing_window_seconds = {window}
psam_key_index = 1

[[bus.bands]]
name = "senior"
min_age = 65
percent = 50

[[bus.bands]]
name = "elder"
min_age = 70
percent = 0

[readers.pcsc]
contactless = "{SLOT_CARD.lower()}"
sam = "{SLOT_PSAM.lower()}"
transmit_timeout = {TRANSMIT_TIMEOUT_S}

[queue]
{queue}""",
        encoding="utf-8",
    )
    return path


class DaemonFailed(RuntimeError):
    """The daemon did not say READY=1 in time, or exited before it did."""


class DaemonProcess:
    """`sscard run` as a child, with its own $NOTIFY_SOCKET and a JSON log appended across restarts."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.log_path = workdir / "daemon.log"
        self.socket_path = workdir / "notify.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._sock: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, crash_at: str | None = None, timeout: float = READY_BOUND_S) -> float:
        """Start the daemon (armed at `crash_at`); seconds until READY=1. DaemonFailed past `timeout`."""
        self._close_socket()
        self.socket_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.socket_path))
        sock.settimeout(0.1)
        self._sock = sock
        self._ready.clear()
        env = {**os.environ, "NOTIFY_SOCKET": str(self.socket_path)}
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "SSCARD_CRASH_AT"):
            env.pop(name, None)
        if crash_at is not None:
            env["SSCARD_CRASH_AT"] = crash_at
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(SSCARD), "--log-level", "info", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        threading.Thread(target=self._receive, args=(sock,), daemon=True).start()
        while not self._ready.wait(0.02):
            if self.process.poll() is not None:
                raise DaemonFailed(f"exited with {self.process.returncode} before READY=1")
            if time.monotonic() - started > timeout:
                raise DaemonFailed(f"no READY=1 within {timeout} s")
        return time.monotonic() - started

    def _receive(self, sock: socket.socket) -> None:
        while self._sock is sock:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if "READY=1" in data.decode(errors="replace").splitlines():
                self._ready.set()

    def wait_exit(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 25.0) -> int | None:
        """SIGTERM and wait: the exit status (None when it had to be killed)."""
        process = self.process
        if process is None:
            return 0
        code: int | None = process.poll()
        if code is None:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
        self._close_socket()
        return code

    def kill(self) -> None:
        if self.alive():
            kill_and_wait(self.pid)
            assert self.process is not None
            self.process.wait(5)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.lines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events

    def tap_ends(self) -> int:
        return sum(1 for event in self.events() if event.get("event") in TAP_END_EVENTS)


def wait_tap(daemon: DaemonProcess, ends_before: int, timeout: float = TAP_BOUND_S) -> str:
    """'ended' once the reader loop closed a tap, 'died' if the daemon exited, else 'hung'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.tap_ends() > ends_before:
            return "ended"
        if not daemon.alive():
            return "died"
        time.sleep(0.02)
    return "hung"


@contextlib.contextmanager
def presented(card: FaultyChip) -> Iterator[VpcdLink]:
    """The card on the contactless reader, and taken away for good at the end."""
    link = VpcdLink(card, port=VPCD_PORTS[SLOT_CARD], return_delay=NO_RETURN)
    link.insert()
    try:
        yield link
    finally:
        link.remove()
        wait_for_presence(SLOT_CARD, present=False)


@contextlib.contextmanager
def psam_in_slot(workdir: Path) -> Iterator[FaultyChip]:
    """The demo PSAM in the SAM slot, behind a fault injector (for runs outside pytest)."""
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam", workdir / "psam.json"))
    link = VpcdLink(psam, port=VPCD_PORTS[SLOT_PSAM])
    link.insert()
    if not wait_for_presence(SLOT_PSAM, present=True):
        raise DaemonFailed("pcscd never saw the PSAM")
    try:
        yield psam
    finally:
        link.remove()
        wait_for_presence(SLOT_PSAM, present=False)


def wait_psam_back(events_before: int, timeout: float = 5.0) -> bool:
    """After a PSAM tear vpcd dials again: wait until pcscd saw it leave and come back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if card_events(SLOT_PSAM) >= events_before + 2 and wait_for_presence(SLOT_PSAM, present=True, timeout=0.2):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------- the verdict


@dataclass
class Verdict:
    """What one case (or one long run) left, judged against the card's own memory."""

    name: str
    debits: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lost: int = 0
    double: int = 0
    ambiguous: int = 0
    """Unconfirmed records of a card that never came back and had not paid, where the terminal
    could not know (see `judge`): allowed, counted."""
    crash_loop: bool = False
    restarts: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        rows = [f"({r['result']}, {r['reason']}, atc={r['atc']}, fare={r['fare']})" for r in self.records]
        return (
            f"{self.name}: {self.debits} debit(s) on the card; records {' '.join(rows) or 'none'}; "
            f"violations: {'; '.join(self.violations) or 'none'}"
        )


@dataclass
class Observed:
    """What the harness saw while a case ran."""

    returned: bool
    restarts: list[float] = field(default_factory=list)
    self_exits: list[int | None] = field(default_factory=list)
    """Exit codes of deaths the case did not cause (no crash point, no kill)."""
    notes: list[str] = field(default_factory=list)
    final_exit: int | None = 0


def _second(record: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(record["time"]).replace(tzinfo=None, microsecond=0)


def _claims_money(record: dict[str, Any]) -> bool:
    """A record that says the card paid: an accepted or unconfirmed fare, or a debit refused as a ride.

    A MAC2 the PSAM rejects (`denied / mac2_invalid`) is a debit whose answer is not genuine:
    the ride is refused, but the record carries the fare and the TAC, so the back office sees
    the card's money.
    """
    if record["result"] in ("accepted", "unconfirmed"):
        return (record["fare"] or 0) > 0
    return record["reason"] == "mac2_invalid" and record.get("tac") is not None


def judge(
    name: str,
    before: Purse,
    after: Purse,
    records: list[dict[str, Any]],
    pending: list[int],
    log_lines: list[str],
    observed: Observed,
    must_pay: bool = False,
    answer_unknown: bool = False,
) -> Verdict:
    """Compare the card's memory with the terminal's records and the run's health (module doc).

    `answer_unknown`: the terminal cannot know whether the card ran DEBIT (no answer, or an
    answer that says nothing), so an unconfirmed record of a card that never came back is
    right even when the card did not pay; it is counted as `ambiguous`, not as a violation.
    """
    verdict = Verdict(name, records=records, restarts=observed.restarts)
    debit_atcs = set(range(before.atc + 1, after.atc + 1))
    verdict.debits = len(debit_atcs)
    if must_pay and verdict.debits != 1:
        verdict.violations.append(f"the card paid {verdict.debits} times for one ride (expected once)")
    debit_times = {record.atc: record.time for record in after.transactions if record.atc in debit_atcs and record.time}
    money = [r for r in records if _claims_money(r)]
    claims: Counter[int] = Counter()
    for record in money:
        if record.get("atc") is None:
            verdict.violations.append(f"{record['result']} record {record['tap_id'][:16]} with a fare and no ATC")
            verdict.double += 1
            continue
        claims[record["atc"] + 1] += 1
    pending_atcs = set(pending)
    for atc in sorted(debit_atcs):
        if claims[atc] == 0:
            state = "still pending in the journal" if atc in pending_atcs else "no record"
            verdict.violations.append(f"debit ATC {atc} on the card: {state} (lost)")
            verdict.lost += 1
        elif claims[atc] > 1:
            verdict.violations.append(f"debit ATC {atc} claimed by {claims[atc]} records (double)")
            verdict.double += claims[atc] - 1
    unconfirmed_claims = Counter(
        r["atc"] + 1 for r in money if r["result"] == "unconfirmed" and r.get("atc") is not None
    )
    for atc, count in sorted(claims.items()):
        if atc in debit_atcs:
            continue
        if answer_unknown and not observed.returned and unconfirmed_claims[atc] == count:
            # The terminal never learnt whether DEBIT ran, and the card never came back: an
            # unconfirmed record is the honest answer, and clearing (no TAC) will not charge it.
            verdict.ambiguous += count
            continue
        verdict.violations.append(f"{count} record(s) claim ATC {atc}, which the card never debited (phantom)")
        verdict.double += count
    paid_taps = {r["tap_id"] for r in money}
    lost_seconds = {debit_times[a] for a in debit_atcs if claims[a] == 0 and a in debit_times}
    for record in records:
        if record["result"] == "denied" and not _claims_money(record) and (
            record["tap_id"] in paid_taps or _second(record) in lost_seconds
        ):
            verdict.violations.append(f"denied record ({record['reason']}) for a tap in which the card paid")
    if observed.returned:
        unconfirmed = [r for r in money if r["result"] == "unconfirmed"]
        if unconfirmed:
            verdict.violations.append(f"{len(unconfirmed)} unconfirmed record(s) though the card came back")
    for atc in pending:
        if atc not in debit_atcs:
            verdict.violations.append(f"journal still holds a debit (ATC {atc}) the card never made")
        elif claims[atc]:
            verdict.violations.append(f"journal still holds the debit ATC {atc}, which has its record")
    tap_ids = Counter(r["tap_id"] for r in records)
    if any(count > 1 for count in tap_ids.values()):
        verdict.violations.append("one tap id on several records")
    for seconds in observed.restarts:
        if seconds > READY_BOUND_S:
            verdict.violations.append(f"READY {seconds:.1f} s after a restart (bound {READY_BOUND_S} s)")
    if observed.self_exits:
        verdict.violations.append(
            f"the daemon died on its own {len(observed.self_exits)} time(s), {observed.self_exits}"
        )
        verdict.crash_loop = len(observed.self_exits) > 1
    verdict.violations.extend(observed.notes)
    if observed.final_exit != 0:
        verdict.violations.append(f"SIGTERM at the end: exit status {observed.final_exit}")
    verdict.violations.extend(unhandled(log_lines))
    return verdict


def unhandled(lines: list[str]) -> list[str]:
    """Unhandled exceptions in the daemon's output: tracebacks, `exc_info`, `exception` fields."""
    found: list[str] = []
    for line in lines:
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "exception" in event or "exc_info" in event:
                text = str(event.get("exception") or event.get("exc_info"))
                last = text.strip().splitlines()[-1] if text.strip() else ""
                found.append(f"exception logged at {event.get('event')}: {last[:160]}")
        elif line.startswith("Traceback") or (found and line and not line.startswith(" ") and ":" in line):
            if line.startswith("Traceback"):
                found.append("traceback on stderr")
            elif found[-1] == "traceback on stderr":
                found[-1] = f"traceback on stderr: {line[:160]}"
    counted = Counter(found)
    return [text if n == 1 else f"{text} (x{n})" for text, n in counted.items()]


def read_state(config_dir: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The queue's records, and the card ATCs of the debits the journal still holds as pending.

    The journal's table is read with plain SQL wherever it lives (its own file, or the
    queue's database), so the judge does not lean on the code it judges.
    """
    records: list[dict[str, Any]] = []
    queue_file = config_dir / "queue.sqlite3"
    if queue_file.exists():
        queue = TapQueue(QueueSettings(path=queue_file), readonly=True)
        try:
            records = [tap.record() for tap in queue.iter_taps()]
        finally:
            queue.close()
    pending: list[int] = []
    for name in ("journal.sqlite3", "queue.sqlite3"):
        path = config_dir / name
        if not path.exists():
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "pending_debits" in tables:
                for (recovery,) in db.execute("SELECT recovery FROM pending_debits"):
                    pending.append((int(json.loads(recovery)["offline_atc"]) + 1) & 0xFFFF)
        finally:
            db.close()
    return records, pending


# ---------------------------------------------------------------------------- running a case


@dataclass
class Runner:
    """Runs cases on the bench; the PSAM is the caller's (the package fixture, or `psam_in_slot`)."""

    root: Path
    psam: FaultyChip

    def card(self, case: Case) -> tuple[VirtualCard, FaultyChip]:
        virtual = VirtualCard.from_profile(case.profile)
        if case.own_balance is not None:
            virtual.store.commit(virtual.memory.with_changes(balance=case.own_balance))
        return virtual, FaultyChip(virtual)

    def run(self, case: Case) -> Verdict:
        started = time.monotonic()
        workdir = self.root / case.id
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        small = case.disk_full or case.fill_after_fault
        with _state_dir(workdir, small) as state:
            config = write_config(workdir, window=case.window, state_dir=state, min_free_bytes=0 if small else None)
            virtual, card = self.card(case)
            before = Purse.of(virtual)
            daemon = DaemonProcess(config, workdir)
            observed = Observed(returned=case.returns)
            try:
                self._run(case, daemon, card, observed, state)
            finally:
                self.psam.inject(None)
                observed.final_exit = daemon.stop()
            records, pending = read_state(state)
        verdict = judge(
            case.id,
            before,
            Purse.of(virtual),
            records,
            pending,
            daemon.lines(),
            observed,
            must_pay=case.must_pay,
            answer_unknown=case.answer_unknown,
        )
        verdict.seconds = time.monotonic() - started
        return verdict

    def _run(self, case: Case, daemon: DaemonProcess, card: FaultyChip, observed: Observed, state: Path) -> None:
        # A daemon that cannot start on a fresh state directory is a broken build, not a finding
        # of this case: DaemonFailed stops the run.
        daemon.start(case.crash_at, timeout=FIRST_START_S)
        card.kill_pid = daemon.pid
        if case.disk_full:
            _fill(state)
        target = self.psam if case.point is not None and case.point.side == "psam" else card
        psam_events = card_events(SLOT_PSAM)
        if case.fault is not None:
            target.inject(case.fault)
        killed = case.crash_at is not None or (case.fault is not None and case.fault.kind is FaultKind.KILL_TERMINAL)
        self._tap(daemon, card, observed, expect_death=killed, what="the faulty tap")
        if case.fault is not None and target.struck is None:
            observed.notes.append(f"the fault never struck ({case.fault.kind.value} at {case.point})")
            target.inject(None)
        if case.crash_at is not None and daemon.alive():
            observed.notes.append(f"crash point {case.crash_at} never reached")
        if (
            target is self.psam
            and self.psam.struck is not None
            and self.psam.struck.fault.kind
            in (
                FaultKind.TEAR_BEFORE,
                FaultKind.TEAR_AFTER,
            )
            and not wait_psam_back(psam_events)
        ):
            observed.notes.append("the PSAM did not come back after its tear")
        if not daemon.alive():
            self._restart(daemon, card, observed)
        if case.fill_after_fault:
            _fill(state)
            self._watch(daemon, card, observed, case.window + 2.5)
        if case.disk_full or case.fill_after_fault:
            _unfill(state)
        if case.returns:
            if daemon.alive():
                self._tap(daemon, card, observed, expect_death=False, what="the card's return")
            if not daemon.alive():
                self._restart(daemon, card, observed)
        else:
            self._watch(daemon, card, observed, case.window + 2.5)
        # Let supervise() run once more, then see that the daemon is still there.
        time.sleep(1.2)
        if not daemon.alive():
            observed.self_exits.append(daemon.wait_exit(1))

    def _watch(self, daemon: DaemonProcess, card: FaultyChip, observed: Observed, seconds: float) -> None:
        """Wait `seconds` (supervise() settles torn debits meanwhile), restarting a daemon that died."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not daemon.alive():
                observed.self_exits.append(daemon.wait_exit(1))
                self._restart(daemon, card, observed)
            time.sleep(0.1)

    def _tap(
        self, daemon: DaemonProcess, card: FaultyChip, observed: Observed, *, expect_death: bool, what: str
    ) -> None:
        ends = daemon.tap_ends()
        with presented(card):
            outcome = wait_tap(daemon, ends)
        if outcome == "hung":
            observed.notes.append(f"{what}: no end of tap within {TAP_BOUND_S} s")
        elif outcome == "died" and not expect_death:
            observed.self_exits.append(daemon.wait_exit(1))

    def _restart(self, daemon: DaemonProcess, card: FaultyChip, observed: Observed) -> None:
        """Start again, as systemd would (Restart=on-failure); a second failure is a crash loop."""
        for attempt in range(3):
            daemon.wait_exit(2)
            try:
                observed.restarts.append(daemon.start(timeout=READY_BOUND_S))
            except DaemonFailed as error:
                observed.self_exits.append(daemon.process.returncode if daemon.process else None)
                observed.notes.append(f"restart {attempt + 1}: {error}")
                continue
            card.kill_pid = daemon.pid
            return


TMPFS_BYTES = 16 * 1024 * 1024


@contextlib.contextmanager
def _state_dir(workdir: Path, small: bool) -> Iterator[Path]:
    """The state directory; for a disk-full case a 16 MiB tmpfs (needs root: mount(8))."""
    state = workdir / "state"
    state.mkdir()
    if not small:
        yield state
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(state)], check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def _fill(state: Path) -> None:
    """Fill the file system of `state` to the last block."""
    with contextlib.suppress(OSError), (state / "filler").open("wb") as filler:
        with contextlib.suppress(OSError):
            while True:
                filler.write(bytes(4096))
                filler.flush()
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0")
                filler.flush()


def _unfill(state: Path) -> None:
    (state / "filler").unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the points


@dataclass
class TracingChip:
    """Passes commands on and remembers them (to list the commands a clean tap sends)."""

    card: Any
    commands: list[bytes] = field(default_factory=list)

    def power_on(self) -> bytes:
        result: bytes = self.card.power_on()
        return result

    def power_off(self) -> None:
        self.card.power_off()

    def atr(self) -> bytes:
        result: bytes = self.card.atr()
        return result

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        result: bytes = self.card.transmit(apdu)
        return result


NAMES = {
    INS_SELECT: "select",
    INS_READ_BINARY: "read binary",
    INS_READ_RECORD: "read record",
    INS_GET_BALANCE: "get balance",
    INS_INITIALIZE: "initialize",
    INS_UPDATE_CAPP: "update capp",
    INS_DEBIT: "debit",
    INS_GET_CHALLENGE: "get challenge",
    INS_EXTERNAL_AUTH: "external auth",
    INS_INTERNAL_AUTH: "internal auth",
    INS_GET_RESPONSE: "get response",
    INS_PSAM_MAC1: "mac1",
    INS_PSAM_MAC2: "verify mac2",
}


def points_of(side: Side, commands: list[bytes]) -> list[Point]:
    """Each command as a point: its instruction byte and which occurrence of it it is."""
    seen: Counter[int] = Counter()
    points = []
    for apdu in commands:
        ins = apdu[1]
        seen[ins] += 1
        name = NAMES.get(ins, f"ins {ins:02x}")
        points.append(Point(side, ins, seen[ins], f"{name} {seen[ins]}"))
    return points


def trace_clean_tap(root: Path, psam: FaultyChip) -> tuple[list[Point], list[Point]]:
    """The commands one clean bus tap sends to the card and to the PSAM, as matrix points."""
    workdir = root / "trace"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = write_config(workdir, window=RETURN_WINDOW_S)
    card = TracingChip(VirtualCard.from_profile("sichuan"))
    psam_trace = TracingChip(psam.card)
    psam.card = psam_trace
    daemon = DaemonProcess(config, workdir)
    try:
        daemon.start(timeout=FIRST_START_S)
        psam_trace.commands.clear()
        ends = daemon.tap_ends()
        link = VpcdLink(card, port=VPCD_PORTS[SLOT_CARD], return_delay=NO_RETURN)
        link.insert()
        try:
            outcome = wait_tap(daemon, ends)
        finally:
            link.remove()
            wait_for_presence(SLOT_CARD, present=False)
        assert outcome == "ended", f"the clean tap {outcome}"
    finally:
        psam.card = psam_trace.card
        daemon.stop()
    return points_of("card", card.commands), points_of("psam", psam_trace.commands)


def all_cases(card_points: list[Point], psam_points: list[Point]) -> list[Case]:
    """The whole matrix: every point x every fault kind, every crash point, the specials; both endings."""
    debit = next(p for p in card_points if p.ins == INS_DEBIT)
    mac2 = next(p for p in psam_points if p.ins == INS_PSAM_MAC2)
    points = tuple(card_points + psam_points)
    cases: list[Case] = []
    for returns in (True, False):
        cases += fault_cases(points, returns)
        cases += crash_cases(debit, returns)
        cases += special_cases(debit, mac2, returns)
    return cases


# ---------------------------------------------------------------------------- random kills


@dataclass
class KillRun:
    """The random-kill run's figures."""

    verdict: Verdict
    kills: int
    taps: int
    mid_tap: int
    """Kills that struck before the tap's end (the others struck while the card was held)."""


def random_kills(root: Path, psam: FaultyChip, count: int, budget_s: float, seed: int | None = None) -> KillRun:
    """Taps in a loop, the daemon SIGKILLed at a random moment of `count` of them, restarted each time.

    The card comes back after every kill (the tearing window is long), and once more at the
    end, so every torn debit can be settled; the fare is 1 fen so that the purse lasts.
    """
    rng = random.Random(seed)
    workdir = root / "random-kills"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = write_config(workdir, window=3600, fare=1, passback=0)
    virtual = VirtualCard.from_profile("sichuan")
    card = FaultyChip(virtual)
    before = Purse.of(virtual)
    daemon = DaemonProcess(config, workdir)
    observed = Observed(returned=True)
    started = time.monotonic()
    kills = taps = mid_tap = 0
    try:
        daemon.start(timeout=FIRST_START_S)
        tap_seconds = _clean_tap_seconds(daemon, card)
        taps += 1
        while kills < count and time.monotonic() - started < budget_s:
            if not pcscd_is_serving():
                # Taps against a bench without pcscd would only count kills of an idle daemon.
                observed.notes.append(f"pcscd stopped serving after {kills} kills: the run is cut short")
                break
            delay = rng.uniform(0.0, tap_seconds * 1.2)
            ends = daemon.tap_ends()
            pid = daemon.pid
            timer = threading.Timer(delay, kill_and_wait, args=(pid,))
            with presented(card):
                timer.start()
                outcome = wait_tap(daemon, ends)
                timer.join()
            taps += 1
            kills += 1
            mid_tap += outcome == "died"
            if outcome == "hung":
                observed.notes.append(f"tap {taps}: no end of tap within {TAP_BOUND_S} s")
            if daemon.alive():
                # The kill came after the tap ended, or the tap ended before it: it lands now.
                daemon.kill()
            daemon.wait_exit(2)
            _restart_for_kills(daemon, observed)
            if not daemon.alive():
                break
        if daemon.alive():
            ends = daemon.tap_ends()
            with presented(card):
                if wait_tap(daemon, ends) != "ended":
                    observed.notes.append("the last tap did not end")
            taps += 1
            time.sleep(1.2)
            if not daemon.alive():
                observed.self_exits.append(daemon.wait_exit(1))
    finally:
        observed.final_exit = daemon.stop()
    records, pending = read_state(workdir / "state")
    verdict = judge("random-kills", before, Purse.of(virtual), records, pending, daemon.lines(), observed)
    verdict.seconds = time.monotonic() - started
    return KillRun(verdict, kills, taps, mid_tap)


def _clean_tap_seconds(daemon: DaemonProcess, card: FaultyChip) -> float:
    ends = daemon.tap_ends()
    started = time.monotonic()
    with presented(card):
        outcome = wait_tap(daemon, ends)
    assert outcome == "ended", f"the first tap {outcome}"
    return time.monotonic() - started


def _restart_for_kills(daemon: DaemonProcess, observed: Observed) -> None:
    for attempt in range(3):
        try:
            observed.restarts.append(daemon.start(timeout=READY_BOUND_S))
            return
        except DaemonFailed as error:
            observed.self_exits.append(daemon.process.returncode if daemon.process else None)
            observed.notes.append(f"restart {attempt + 1} after a kill: {error}")


def count_summary(verdicts: list[Verdict], points: int, faults: int) -> str:
    """The one line `make crashtest` prints."""
    violations = sum(len(v.violations) for v in verdicts)
    lost = sum(v.lost for v in verdicts)
    double = sum(v.double for v in verdicts)
    loops = sum(v.crash_loop for v in verdicts)
    return (
        f"crashtest: {points} points x {faults} faults = {points * faults} cases, {len(verdicts)} runs judged, "
        f"{violations} violations, {lost} lost, {double} double, {loops} crash loops"
    )
