"""The purchase path's definite outcomes, each made to happen through pcscd and vpcd.

A card that commits DEBIT and then garbles its answer is charged once and recorded as paid;
a card that refuses MAC1 is not genuine and is refused at once within the window; a card on
its overdraft is charged with the card's own arithmetic in its 0x1E record; the state files
are owner-only and hold no purse serial; storage trouble never takes the daemon down; and a
record already queued settles a journalled debit instead of crashing the terminal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from protocols.purchase import Recovery
from protocols.tunion import PROCESS_RECORD_LAYOUT
from reader.daemon.journal import Journal, PendingDebit
from reader.uplink.errors import DiskFullError
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from sscard_sim.card import VirtualCard
from sscard_sim.faults import Fault, FaultKind, FaultyChip
from tests.daemon.bench import TAP_DAY, LogBuffer, ManualClock, Purse, Terminal, terminal_config
from tests.support.taps import tap_record
from tests.uplink.test_uplink_disk_full import fill_up, small_fs  # noqa: F401 - the tmpfs fixture

INS_INITIALIZE = 0x50
INS_DEBIT = 0x54
FARE = 200
TAP_AGAIN = "请重新刷卡 Tap again"


def _bus(tmp_path: Path) -> Terminal:
    return Terminal(terminal_config("bus", tmp_path / "bus"), ManualClock(TAP_DAY))


def _results(records: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(record["result"], record["reason"]) for record in records]


def test_a_garbled_answer_after_the_debit_is_charged_once_and_recorded_as_paid(
    tmp_path: Path, psam: object, tap_logs: LogBuffer
) -> None:
    """DEBIT committed, then a one-byte answer: pending (never denied), settled on return."""
    chip = FaultyChip(VirtualCard.from_profile("sichuan"))
    chip.inject(Fault(FaultKind.ONE_BYTE, ins=INS_DEBIT))
    with _bus(tmp_path) as terminal:
        first = terminal.tap(chip)
        assert chip.struck is not None and chip.struck.executed, "the card committed the debit"
        assert (first.signals[0].lines[0], first.records) == (TAP_AGAIN, [])
        terminal.clock.advance(5)
        back = terminal.tap(chip)
    assert _results(back.records) == [("accepted", "ok")]
    record = back.records[0]
    assert record["recovered"] is True and record["fare"] == FARE
    assert first.before is not None and back.after is not None
    assert back.after.balance == first.before.balance - FARE, "charged exactly once"
    assert len(back.after.debits_since(first.before)) == 1


def test_a_card_refusing_mac1_is_not_genuine_and_refused_at_once_within_the_window(
    tmp_path: Path, psam: object, tap_logs: LogBuffer
) -> None:
    """9302 to DEBIT proves the card did not debit: a definite denial, never `unconfirmed`."""
    chip = FaultyChip(VirtualCard.from_profile("sichuan"))
    chip.inject(Fault(FaultKind.STATUS, ins=INS_DEBIT, sw=0x9302))
    with _bus(tmp_path) as terminal:
        refused = terminal.tap(chip)
        assert chip.struck is not None and not chip.struck.executed
        terminal.clock.advance(10)
        again = terminal.tap(chip)
        pending = terminal.daemon.services.journal.all_pending() if terminal.daemon and terminal.daemon.services else []
    assert _results(refused.records) == [("denied", "card_not_genuine")]
    assert _results(again.records) == [("denied", "card_not_genuine")]
    assert pending == [], "a refused debit leaves nothing for recovery"
    assert refused.before is not None and again.after is not None
    assert again.after == refused.before, "the card was never debited"
    events = [event for event in tap_logs.events() if event.get("event") == "tap_debit_refused"]
    assert events and events[-1]["sw"] == "9302"


def test_the_second_tap_of_a_clone_sends_no_initialize(tmp_path: Path, psam: object) -> None:
    chip = FaultyChip(VirtualCard.from_profile("sichuan"))
    chip.inject(Fault(FaultKind.STATUS, ins=INS_DEBIT, sw=0x9302))
    with _bus(tmp_path) as terminal:
        terminal.tap(chip)
        terminal.clock.advance(10)
        # Armed at INITIALIZE: had the terminal tried to charge again, the fault would strike.
        chip.inject(Fault(FaultKind.STATUS, ins=INS_INITIALIZE, sw=0x6F00))
        terminal.tap(chip)
    assert chip.struck is None, "no purchase was started for a card found not genuine"


def test_a_card_on_its_overdraft_is_charged_with_the_cards_own_arithmetic(
    tmp_path: Path, psam: object
) -> None:
    """Own money 100, allowance 500, fare 200: charged; own money goes to -100."""
    card = VirtualCard.from_profile("chongqing")
    card.store.commit(card.memory.with_changes(balance=100))
    allowance = card.profile.tunion.overdraft_limit
    with _bus(tmp_path) as terminal:
        tap = terminal.tap(card)
    record = tap.record
    assert (record["result"], record["fare"]) == ("accepted", FARE)
    assert (record["balance_before"], record["balance_after"]) == (100, -100)
    assert record["overdraft_allowance"] == allowance
    assert Purse.of(card).balance == -100
    written = PROCESS_RECORD_LAYOUT.parse(card.memory.process_log[0])
    assert written.amount == FARE
    assert written.balance_after == 100 + allowance - FARE, "the card counts its allowance in"


def test_state_files_are_owner_only_and_hold_no_purse_serial(tmp_path: Path, psam: object) -> None:
    card = VirtualCard.from_profile("sichuan")
    serial = card.profile.tunion.public.application_serial
    chip = FaultyChip(card)
    chip.inject(Fault(FaultKind.TEAR_AFTER, ins=INS_DEBIT))
    config = terminal_config("bus", tmp_path / "bus")
    fresh = tmp_path / "state"  # not there yet: the daemon creates it
    config = config.model_copy(
        update={
            "terminal": config.terminal.model_copy(update={"state_dir": fresh}),
            "queue": config.queue.model_copy(update={"path": fresh / "queue.sqlite3"}),
        }
    )
    terminal = Terminal(config, ManualClock(TAP_DAY))
    with terminal:
        terminal.tap(chip)
        state = terminal.config.terminal.state_dir
        queue_file = terminal.config.queue.path
        pending = terminal.daemon.services.journal.all_pending() if terminal.daemon and terminal.daemon.services else []
    assert len(pending) == 1, "the torn debit is in the journal"
    assert state.stat().st_mode & 0o777 == 0o700
    assert queue_file.stat().st_mode & 0o777 == 0o600
    assert not (state / "journal.sqlite3").exists(), "the journal lives in the queue's database"
    for path in state.glob("queue.sqlite3*"):
        assert serial.encode() not in path.read_bytes(), f"{path.name} holds the purse serial in clear"
    assert pending[0].serial_masked == "*" * (len(serial) - 4) + serial[-4:]


def test_a_record_already_queued_settles_the_journal_instead_of_crashing(tmp_path: Path, psam: object) -> None:
    """A journal of an earlier version, whose debit's record was committed before a kill.

    The earlier daemon crash-looped here (DuplicateTapError at start-up and on every tap of
    the card); now the debit counts as settled and the terminal serves.
    """
    config = terminal_config("bus", tmp_path / "bus")
    state = config.terminal.state_dir
    recovery = Recovery("03104510100000009991", 41, 0x09, FARE, 5000, bytes(6), 7, dt.datetime(2025, 1, 1, 8))
    created = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    old = sqlite3.connect(state / "journal.sqlite3")
    old.executescript(
        "CREATE TABLE pending_debits (serial TEXT PRIMARY KEY, tap_id TEXT NOT NULL, recovery TEXT NOT NULL,"
        " created_at REAL NOT NULL, token TEXT, region TEXT, allowance INTEGER NOT NULL DEFAULT 0);"
    )
    fields = dataclasses.asdict(recovery) | {"terminal_id": "00" * 6, "time": recovery.time.isoformat()}
    old.execute(
        "INSERT INTO pending_debits VALUES (?, ?, ?, ?, ?, ?, ?)",
        (recovery.application_serial, "T-ALREADY-QUEUED", json.dumps(fields), created.timestamp(), None, "510100", 0),
    )
    old.commit()
    old.close()
    with TapQueue(config.queue) as queue:
        queue.enqueue({**tap_record(0, terminal_id=config.terminal.id), "tap_id": "T-ALREADY-QUEUED"})
    with Terminal(config, ManualClock(TAP_DAY)) as terminal:
        services = terminal.daemon.services if terminal.daemon else None
        assert services is not None
        assert services.journal.all_pending() == [], "settled at start-up, not re-recorded"
        assert [tap.record()["tap_id"] for tap in services.queue.iter_taps()] == ["T-ALREADY-QUEUED"]
        tap = terminal.tap(VirtualCard.from_profile("sichuan"))
    assert _results(tap.records) == [("accepted", "ok")]


def test_the_main_loop_survives_a_storage_error(tmp_path: Path, psam: object, tap_logs: LogBuffer) -> None:
    with _bus(tmp_path) as terminal:
        daemon = terminal.daemon
        assert daemon is not None
        # Another process damages the database under the running daemon: its status reads fail.
        vandal = sqlite3.connect(terminal.config.queue.path)
        vandal.execute("DROP TABLE totals")
        vandal.commit()
        vandal.close()
        daemon.supervise()
        daemon.supervise()
    assert any(event.get("event") == "daemon_storage_failed" for event in tap_logs.events())


@pytest.mark.usefixtures("small_fs")
def test_a_full_disk_refuses_the_journal_entry_with_a_typed_error(small_fs: Path) -> None:  # noqa: F811
    """`[queue] min_free_bytes = 0`: SQLite itself runs out of space, and says so as DiskFullError."""
    queue = TapQueue(QueueSettings(path=small_fs / "queue.sqlite3", min_free_bytes=0))
    journal = Journal(queue, b"k" * 32)
    fill_up(small_fs)
    when = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(DiskFullError):
        for n in range(100_000):
            recovery = Recovery(f"{n:020d}", n, 0x09, FARE, 5000, bytes(6), n, when.replace(tzinfo=None))
            journal.begin_debit(PendingDebit(f"tap-{n}", recovery, when, "ab" * 32, "510100", 0))
    assert queue.out_of_service is not None
    queue.close()


def test_the_process_record_written_to_the_card_follows_the_layout_byte_for_byte(
    tmp_path: Path, psam: object
) -> None:
    """The 0x1E record the validator writes, against the reference's layout written out by hand.

    cards.md "0x1E process/journey record" (FLP docs and the Shanghai gate agree): type 06
    single ride; terminal number 8 bytes BCD, the PSAM's 510100000001 right-aligned; industry
    02 bus; line 0812, station 0034, operator 0007 BCD and one RFU byte; amount and balance
    after, 4 bytes big-endian; YYYYMMDDhhmmss BCD; the operator's city code and acquirer from
    the configuration; six reserved zeros.
    """
    config = terminal_config("bus", tmp_path / "bus")
    assert config.bus is not None
    bus = config.bus.model_copy(
        update={"station": "34", "operator_code": "7", "city_code": "4000", "acquirer": "0123456789ABCDEF"}
    )
    card = VirtualCard.from_profile("sichuan")
    before = card.memory.balance
    with Terminal(config.model_copy(update={"bus": bus}), ManualClock(TAP_DAY)) as terminal:
        tap = terminal.tap(card)
    assert tap.record["result"] == "accepted"
    when = TAP_DAY.strftime("%Y%m%d%H%M%S")
    expected = (
        "06"
         "0000510100000001"
         "02"
         "0812" + "0034" + "0007" + "00"
        + f"{FARE:08X}"
        + f"{before - FARE:08X}"
        + when
        + "4000"
        + "0123456789ABCDEF"
        + "000000000000"
    )
    assert card.memory.process_log[0].hex().upper() == expected
