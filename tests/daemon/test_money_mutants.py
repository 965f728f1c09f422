"""Where money goes wrong in one changed line: each test here pins one such line of the pipeline.

Each runs the real daemon on the pcscd+vpcd bench with a fresh terminal and fresh cards:
- a MAC2 the PSAM rejects is no paid ride (the card debited, its answer is not genuine);
- "accepted" is said only once the record is in the queue, never while it cannot be written;
- the hotlist is looked up at library gates and pharmacy POS, not only on buses;
- only an earlier *bus* ride on another line, before the tap, earns the transfer discount.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocols.tunion import PROCESS_RECORD_LAYOUT, ProcessRecord
from reader.config import Config
from reader.daemon.feedback import Signal
from reader.uplink.hotlist import encode_hotlist
from sscard_sim.card import VirtualCard
from sscard_sim.faults import Fault, FaultKind
from sscard_sim.pcscd import VPCD_PORTS, wait_for_presence
from sscard_sim.tearing import TearingCard
from sscard_sim.vpcd import VpcdLink
from tests.daemon.bench import (
    SIGNAL_TIMEOUT,
    SLOT_CARD,
    TAP_DAY,
    ManualClock,
    Tap,
    Terminal,
    committed,
    free_loopback_port,
    terminal_config,
)

INS_VERIFY_MAC2 = 0x72
SW_MAC_INVALID = 0x9302
BUS_INDUSTRY, RAIL_INDUSTRY = 0x02, 0x01
FARE, TRANSFER_DISCOUNT = 200, 100
"""config/demo.toml's line 812: a 2.00 yuan fare, 1.00 off on a transfer within 90 minutes."""


def assert_debit_recorded(tap: Tap, fare: int) -> None:
    """The record carries the debit the card itself logged: its ATC, a TAC, the PSAM's sequence."""
    record = tap.record
    assert tap.before is not None and tap.after is not None
    (logged,) = tap.after.debits_since(tap.before)
    assert logged.amount == fare == tap.before.balance - tap.after.balance
    assert record["atc"] == logged.atc - 1, "the ATC the card reported at INITIALIZE"
    assert re.fullmatch("[0-9A-F]{8}", record["tac"]), record["tac"]
    assert isinstance(record["psam_sequence"], int) and isinstance(record["overdraft_allowance"], int)
    assert record["recovered"] is False
    assert re.fullmatch("[0-9a-f]{64}", record["card_token"]) and record["region"].startswith("51")


def holder_terminal(kind: str, workdir: Path) -> Config:
    listen = f"unix:{workdir / 'api.sock'}" if kind == "library" else f"127.0.0.1:{free_loopback_port()}"
    return terminal_config(kind, workdir / kind, api_listen=listen)


# --------------------------------------------------------------------------- MAC2


@pytest.fixture
def psam_refusing_mac2(psam: TearingCard) -> Iterator[TearingCard]:
    """The bench PSAM, answering 9302 (MAC invalid) to the next VERIFY MAC2."""
    psam.inject(Fault(FaultKind.STATUS, ins=INS_VERIFY_MAC2, sw=SW_MAC_INVALID))
    yield psam
    psam.inject(None)


def test_a_mac2_the_psam_rejects_is_not_a_paid_ride(psam_refusing_mac2: TearingCard, tmp_path: Path) -> None:
    config = terminal_config("bus", tmp_path / "bus")
    card = VirtualCard.from_profile("sichuan")
    with Terminal(config, ManualClock(TAP_DAY)) as validator:
        tap = validator.tap(card)
    assert psam_refusing_mac2.struck is not None, "the PSAM was never asked to verify MAC2"
    record = tap.record
    assert (record["result"], record["reason"], record["mac2_verified"]) == ("denied", "mac2_invalid", False)
    assert tap.signals[0].beep != "ok"
    # The card did debit: the record keeps the debit for clearing, but says no ride was paid.
    assert record["fare"] == FARE and record["balance_before"] - record["balance_after"] == FARE
    assert_debit_recorded(tap, FARE)


# --------------------------------------------------------------------------- record before "accepted"


@dataclasses.dataclass
class QueueProbe:
    """At each signal, whether the tap's record was already in the queue file."""

    path: Path
    queued_at_signal: list[int] = dataclasses.field(default_factory=list)

    def count(self) -> int:
        with sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            (depth,) = conn.execute("SELECT COUNT(*) FROM taps").fetchone()
        return int(depth)


class ProbedTerminal(Terminal):
    """A terminal whose feedback probe looks at the queue before taking the signal."""

    probe: QueueProbe

    def _on_signal(self, signal: Signal) -> None:
        self.probe.queued_at_signal.append(self.probe.count())
        super()._on_signal(signal)


def present(terminal: Terminal, card: VirtualCard, *, while_held: sqlite3.Connection, hold_s: float) -> tuple[int, int]:
    """Insert `card` while `while_held` holds the queue's write lock for `hold_s`, then release it.

    Returns the number of signals given while the lock was held, and after it was released.
    """
    link = VpcdLink(card, port=VPCD_PORTS[SLOT_CARD])
    link.insert()
    try:
        with terminal._cond:
            terminal._cond.wait_for(lambda: len(terminal.signals) > 0, hold_s)
            during = len(terminal.signals)
        while_held.execute("ROLLBACK")
        with terminal._cond:
            terminal._cond.wait_for(lambda: len(terminal.signals) > 0, SIGNAL_TIMEOUT)
            after = len(terminal.signals)
    finally:
        link.remove()
        assert wait_for_presence(SLOT_CARD, present=False), "pcscd never saw the card leave"
    return during, after


def test_accepted_is_said_only_after_the_record_is_queued(psam: TearingCard, tmp_path: Path) -> None:
    config = holder_terminal("library", tmp_path)
    gate = ProbedTerminal(config, ManualClock(TAP_DAY))
    gate.probe = QueueProbe(Path(config.queue.path))
    with gate:
        # Another writer holds the queue: the tap's record waits for it (busy timeout 10 s).
        blocker = sqlite3.connect(config.queue.path, isolation_level=None, timeout=1)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            during, after = present(gate, VirtualCard.from_profile("sichuan"), while_held=blocker, hold_s=2.0)
        finally:
            blocker.close()
    assert during == 0, "a signal was given while the tap's record could not be written"
    assert after == 1 and gate.signals[0].open_gate
    assert gate.probe.queued_at_signal == [1]
    (record,) = committed(config)
    assert (record["result"], record["reason"]) == ("accepted", "ok")


# --------------------------------------------------------------------------- hotlist at gates and POS


@pytest.mark.parametrize("kind", ["library", "pharmacy"])
def test_a_hotlisted_card_is_refused_at_gates_and_pos(psam: TearingCard, tmp_path: Path, kind: str) -> None:
    config = holder_terminal(kind, tmp_path)
    card = VirtualCard.from_profile("sichuan")
    with Terminal(config, ManualClock(TAP_DAY)) as terminal:
        served = terminal.tap(card).record
        assert (served["result"], served["reason"]) == ("accepted", "ok")
        assert terminal.daemon is not None and terminal.daemon.services is not None
        terminal.daemon.services.hotlist.install(encode_hotlist(1, [bytes.fromhex(served["card_token"])]))
        refused = terminal.tap(card)
    record = refused.record
    assert (record["result"], record["reason"]) == ("denied", "hotlisted")
    assert record["hotlist_version"] == "1"
    assert not refused.signals[0].open_gate


# --------------------------------------------------------------------------- transfer discount


def earlier_ride(*, industry: int, minutes_before: int, line: str = "0815") -> bytes:
    """A paid ride in the card's process log (file 0x1E), on `line`, `minutes_before` the tap."""
    when = TAP_DAY.replace(tzinfo=None) - dt.timedelta(minutes=minutes_before)
    return PROCESS_RECORD_LAYOUT.build(
        ProcessRecord(
            transaction_type=0x06,
            terminal_id=bytes.fromhex("0000000000000815"),
            industry=industry,
            line_station=bytes.fromhex(line) + bytes(5),
            amount=FARE,
            balance_after=10_000,
            time=when,
            city_code=bytes.fromhex("5101"),
            acquirer=bytes.fromhex("0000000000005101"),
            reserved=bytes(6),
        )
    )


def with_ride(card: VirtualCard, ride: bytes) -> VirtualCard:
    memory = card.memory
    card.store.commit(memory.with_changes(process_log=(ride, *memory.process_log)))
    return card


@pytest.mark.parametrize(
    ("industry", "minutes_before", "transfer"),
    [
        pytest.param(BUS_INDUSTRY, 10, True, id="bus-ride-10-min-ago"),
        pytest.param(RAIL_INDUSTRY, 10, False, id="metro-ride-10-min-ago"),
        pytest.param(BUS_INDUSTRY, -10, False, id="bus-ride-dated-10-min-ahead"),
    ],
)
def test_only_an_earlier_bus_ride_earns_the_transfer_discount(
    psam: TearingCard, tmp_path: Path, industry: int, minutes_before: int, transfer: bool
) -> None:
    config = terminal_config("bus", tmp_path / "bus")
    ride = earlier_ride(industry=industry, minutes_before=minutes_before)
    card = with_ride(VirtualCard.from_profile("sichuan"), ride)
    with Terminal(config, ManualClock(TAP_DAY)) as validator:
        tap = validator.tap(card)
        again = validator.tap(card)  # the paid ride is remembered for the passback window
    record: dict[str, Any] = tap.record
    fare = FARE - TRANSFER_DISCOUNT if transfer else FARE
    assert (record["result"], record["fare_base"]) == ("accepted", FARE)
    assert (record["transfer"], record["fare"]) == (transfer, fare)
    assert_debit_recorded(tap, fare)
    assert (again.record["result"], again.record["reason"]) == ("denied", "already_paid")
