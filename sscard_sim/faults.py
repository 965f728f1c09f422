"""Faults on the air between a reader and a chip: what a terminal's purchase path must survive.

`FaultyChip` wraps any `CardSide` (the virtual card, the virtual PSAM, or another wrapper)
and, at one planned command, misbehaves in one of the ways real cards and readers do:

    tear_before       power lost before the chip sees the command (nothing changes)
    tear_after        the chip runs the command, power is lost before the answer leaves
    one_byte          the chip runs the command and one byte arrives instead of its answer
    truncated         the chip runs the command, half of the answer's data arrives (SW kept)
    overlong          the chip runs the command, its data arrives with trailing bytes (SW kept)
    status            the chip does not run the command and answers a status word (6F00 by default)
    executed_status   the chip runs the command, then answers a status word instead of its answer
    late              the chip runs the command and answers after `delay` seconds (past the
                      terminal's transmit deadline when `delay` is larger than it)
    kill_terminal     the chip runs the command, then the terminal's process is SIGKILLed before
                      the answer leaves: the terminal dies knowing nothing of what the chip did

Each fault is a `Fault`: the kind and where it strikes, either the `occurrence`-th command
with instruction byte `ins` or the `index`-th command of any kind, both counted from the
moment the fault was planned (a card is planned before it is presented, so that is one tap).
A fault strikes once. Tearing (`tear_before`, `tear_after`) raises `CardTorn`, which every
bridge treats as the card leaving the field; `TearingCard` (tearing.py) is this wrapper with
only those two kinds.

    card = FaultyChip(VirtualCard.from_profile("sichuan"))
    card.inject(Fault(FaultKind.EXECUTED_STATUS, ins=0x54))  # DEBIT commits, answers 6F00
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam"))
    psam.inject(Fault(FaultKind.ONE_BYTE, ins=0x72))         # VERIFY MAC2 answers one byte
"""

from __future__ import annotations

import enum
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from reader.backends.base import CardSide
from reader.log import get_logger
from sscard_sim.cos import CardTorn

_log = get_logger(component="fault-injection")

KILL_WAIT_S = 5.0
"""How long `kill_terminal` waits for the terminal to be gone before it lets the answer out."""


class FaultKind(enum.StrEnum):
    """How the chip misbehaves at the planned command (see the module's table)."""

    TEAR_BEFORE = "tear_before"
    TEAR_AFTER = "tear_after"
    ONE_BYTE = "one_byte"
    TRUNCATED = "truncated"
    OVERLONG = "overlong"
    STATUS = "status"
    EXECUTED_STATUS = "executed_status"
    LATE = "late"
    KILL_TERMINAL = "kill_terminal"

    @property
    def executes(self) -> bool:
        """Whether the chip runs the command (so a debit, for one, is committed)."""
        return self not in (FaultKind.TEAR_BEFORE, FaultKind.STATUS)


class FaultPlanError(ValueError):
    """A fault that cannot strike: no place given, or `kill_terminal` without a process."""


@dataclass(frozen=True)
class Fault:
    """One misbehaviour at one command: `ins` (its `occurrence`-th time) or the `index`-th command."""

    kind: FaultKind
    ins: int | None = None
    occurrence: int = 1
    index: int | None = None
    sw: int = 0x6F00
    """The status word of `status` and `executed_status`."""
    delay: float = 3.0
    """Seconds `late` holds the answer back."""
    extra: bytes = bytes(8)
    """What `overlong` appends to the answer's data."""

    def __post_init__(self) -> None:
        if (self.ins is None) == (self.index is None):
            raise FaultPlanError("a fault strikes at an instruction byte or at a command index, exactly one")
        if self.occurrence < 1 or (self.index is not None and self.index < 1):
            raise FaultPlanError("occurrences and indexes count from 1")


@dataclass(frozen=True)
class Struck:
    """What happened when the fault struck: the command, and whether the chip ran it."""

    fault: Fault
    command: bytes
    executed: bool
    true_answer: bytes | None
    """The answer the chip gave (and the terminal did not get as such), when it ran the command."""


@dataclass
class FaultyChip:
    """A `CardSide` that misbehaves once at a planned command; otherwise it passes everything on."""

    card: CardSide
    kill_pid: int | None = None
    """The terminal's process, for `kill_terminal` (set it again after every restart)."""
    struck: Struck | None = field(default=None, init=False)
    _fault: Fault | None = field(default=None, init=False)
    _seen: int = field(default=0, init=False)
    _seen_ins: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def inject(self, fault: Fault | None) -> None:
        """Arm `fault` (None disarms); commands are counted from now. It strikes at most once."""
        if fault is not None and fault.kind is FaultKind.KILL_TERMINAL and self.kill_pid is None:
            raise FaultPlanError("kill_terminal needs the terminal's pid")
        with self._lock:
            self._fault = fault
            self._seen = self._seen_ins = 0
            self.struck = None

    @property
    def armed(self) -> bool:
        return self._fault is not None

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def atr(self) -> bytes:
        return self.card.atr()

    def transmit(self, apdu: bytes) -> bytes:
        fault = self._take(apdu)
        if fault is None:
            return self.card.transmit(apdu)
        _log.info("fault_struck", kind=fault.kind.value, ins=f"{apdu[1]:02X}" if len(apdu) > 1 else None)
        if not fault.kind.executes:
            self.struck = Struck(fault, apdu, executed=False, true_answer=None)
            if fault.kind is FaultKind.TEAR_BEFORE:
                self.card.power_off()
                raise CardTorn(f"power lost before INS {apdu[1]:02X}")
            return fault.sw.to_bytes(2, "big")
        answer = self.card.transmit(apdu)
        self.struck = Struck(fault, apdu, executed=True, true_answer=answer)
        return self._misanswer(fault, apdu, answer)

    def _take(self, apdu: bytes) -> Fault | None:
        """The fault when this command is the planned one (and disarm it), else None."""
        with self._lock:
            fault = self._fault
            if fault is None:
                return None
            self._seen += 1
            if fault.index is not None:
                hit = self._seen == fault.index
            else:
                if len(apdu) < 2 or apdu[1] != fault.ins:
                    return None
                self._seen_ins += 1
                hit = self._seen_ins == fault.occurrence
            if hit:
                self._fault = None
                return fault
            return None

    def _misanswer(self, fault: Fault, apdu: bytes, answer: bytes) -> bytes:
        data, sw = answer[:-2], answer[-2:]
        kind = fault.kind
        if kind is FaultKind.TEAR_AFTER:
            self.card.power_off()
            raise CardTorn(f"power lost after INS {apdu[1]:02X}")
        if kind is FaultKind.ONE_BYTE:
            return answer[:1]
        if kind is FaultKind.TRUNCATED:
            return data[: len(data) // 2] + sw if data else answer[:1]
        if kind is FaultKind.OVERLONG:
            return data + fault.extra + sw
        if kind is FaultKind.EXECUTED_STATUS:
            return fault.sw.to_bytes(2, "big")
        if kind is FaultKind.LATE:
            time.sleep(fault.delay)
            return answer
        if kind is FaultKind.KILL_TERMINAL:
            assert self.kill_pid is not None
            kill_and_wait(self.kill_pid)
            return answer
        raise AssertionError(f"unhandled fault kind {kind}")


def kill_and_wait(pid: int, timeout: float = KILL_WAIT_S) -> bool:
    """SIGKILL `pid` and wait until it has stopped running (dead or a zombie); False on timeout.

    The answer must not leave before the terminal is gone, or the terminal could read it in
    the instant between the signal and its delivery.
    """
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    status = Path(f"/proc/{pid}/stat")
    while time.monotonic() < deadline:
        try:
            text = status.read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if text[text.rindex(")") + 2] in "ZX":
            return True
        time.sleep(0.005)
    _log.error("fault_kill_not_seen", pid=pid, timeout_s=timeout)
    return False
