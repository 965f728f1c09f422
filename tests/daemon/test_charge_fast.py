"""The bus validator's debit, judged by what the virtual card's own memory and the queue hold.

Each tap goes through the daemon's real parts (`tests.daemon.fast_rig`: queue and journal
on disk, the PSAM behind a `SamSlot`, `TapPipeline` and `BusKind` as the daemon runs them)
over the in-process reader instead of pcscd. Faults are the card's and the PSAM's own
(`FaultyChip`, `TearingCard`): the card tears before or after it commits DEBIT, answers a
status word, or garbles its answer. What is asserted is money: the card's balance, ATC and
transaction log against the records, exactly one record per committed debit, and a record
that never claims money the card did not pay.

Status words are those of cards.md §2.5 to §2.7 (9302 MAC invalid, 9401 insufficient
balance, 9406 no proof, 6581 memory failure; `protocols.status.DEBIT_REFUSALS`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from protocols.exchange import Transmit
from protocols.purchase import Recovery
from protocols.tunion import PROCESS_RECORD_LAYOUT
from protocols.tunion_read import PurseRead, read_purse
from reader.backends.base import CardSide
from reader.daemon.charge import CardSeen, Charger, settle_expired
from reader.daemon.crashpoints import ENVIRONMENT_VARIABLE, CrashPoint
from reader.daemon.fares import Fare
from reader.daemon.journal import CardMark, PendingDebit
from reader.daemon.outcome import CardRef, PurseOutcome, TapContext, TapOutcome
from reader.daemon.policy import Decision, Outcome, Reason
from reader.daemon.recording import Recorder
from reader.uplink.hotlist import encode_hotlist
from sscard_sim.card import VirtualCard
from sscard_sim.faults import Fault, FaultKind, FaultyChip
from sscard_sim.profile import TUnionProfile, load_psam_profile
from sscard_sim.psam import VirtualPsam
from sscard_sim.state import MemoryStore
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import TAP_DAY, TracedCard
from tests.daemon.fast_rig import READER, Purse, Rig
from tests.support.taps import tap_record


@pytest.fixture(autouse=True)
def _named_in_the_logs() -> Iterator[None]:
    """As the driver loop does: every event of a tap driven from here names a tap and the reader."""
    with structlog.contextvars.bound_contextvars(tap_id="driven-directly", reader=READER):
        yield


INS_GET_BALANCE = 0x5C
INS_INITIALIZE = 0x50
INS_DEBIT = 0x54
INS_PROOF = 0x5A
INS_MAC1 = 0x70
INS_VERIFY_MAC2 = 0x72
FARE = 200
PASSBACK_S = 60
TEARING_WINDOW = dt.timedelta(seconds=30)
READ_TERMINAL_NUMBER = bytes.fromhex("00B096")
"""READ BINARY of the PSAM's file 0x16 (SFI in P1), the terminal number (cards.md §2.5)."""
SELECT_BY_NAME = bytes.fromhex("00A40400")
TAP_AGAIN = "请重新刷卡 Tap again"
SEE_STAFF = "请联系客服 See staff"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Rig(tmp_path / "bus") as terminal:
        yield terminal


def sichuan() -> VirtualCard:
    return VirtualCard.from_profile("sichuan")


def holding(card: VirtualCard, own: int) -> VirtualCard:
    """`card` holding `own` fen of its own money."""
    return VirtualCard(card.profile, MemoryStore(card.memory.with_changes(balance=own)))


def on_overdraft(own: int) -> VirtualCard:
    """The Chongqing card (allowance ¥5.00) holding `own` fen of its own money."""
    return holding(VirtualCard.from_profile("chongqing"), own)


def purse_profile(card: VirtualCard) -> TUnionProfile:
    assert card.profile.tunion is not None, "a card with a T-Union purse"
    return card.profile.tunion


def token_of(rig: Rig, card: VirtualCard) -> str:
    return rig.services.token(card.profile.ssse.card_number)


def local(when: dt.datetime) -> str:
    """A record's time: the terminal's local time, to the millisecond, with its offset."""
    return when.isoformat(timespec="milliseconds")


def assert_paid(record: dict[str, object], card: VirtualCard, before: Purse, rig: Rig, sequence: int) -> None:
    """The record of a committed debit says exactly what the card's memory and the PSAM hold."""
    after = Purse.of(card)
    assert after.atc == before.atc + 1, "the card committed exactly one debit"
    assert after.transactions[0].atc == after.atc and after.transactions[0].amount == FARE
    assert before.balance - after.balance == FARE
    assert after.tac is not None
    assert (
        record["result"],
        record["reason"],
        record["fare"],
        record["balance_before"],
        record["balance_after"],
        record["atc"],
        record["tac"],
        record["psam_sequence"],
    ) == ("accepted", "ok", FARE, before.balance, after.balance, before.atc, after.tac.hex().upper(), sequence)
    assert record["card_token"] == token_of(rig, card)
    assert record["region"] == card.profile.ssse.region_code


def psam_sequence(rig: Rig) -> int:
    """The PSAM's next terminal transaction sequence number (its own counter)."""
    psam = rig.psam_chip.card
    while not isinstance(psam, VirtualPsam):
        psam = psam.card  # type: ignore[attr-defined]
    return psam.sequence


# ---------------------------------------------------------------------------- committed debits


def test_a_committed_debit_is_recorded_once_with_the_cards_tac_atc_and_the_psam_sequence(rig: Rig) -> None:
    card = sichuan()
    before, sequence = Purse.of(card), psam_sequence(rig)
    tap_id = rig.tap(card)
    records = rig.records()
    assert [r["tap_id"] for r in records] == [tap_id]
    record = records[0]
    assert_paid(record, card, before, rig, sequence)
    assert psam_sequence(rig) == sequence + 1
    assert card.memory.transactions and Purse.of(card).transactions[0].terminal_id == bytes.fromhex("510100000001")
    assert (record["mac2_verified"], record["recovered"], record["overdraft_allowance"]) == (True, False, 0)
    assert (record["time"], record["reader"], record["record_type"]) == (local(TAP_DAY), READER, "tap")
    assert rig.services.journal.all_pending() == []
    assert rig.services.journal.last(token_of(rig, card), CardMark.PAID) == TAP_DAY
    assert rig.published == records
    assert rig.signals.wait(1)[0].lines == ("扣款 2.00", "余额 48.00")


def test_a_paid_card_is_not_charged_again_within_the_passback_window(rig: Rig) -> None:
    card = sichuan()
    rig.tap(card)
    paid = Purse.of(card)
    rig.advance(PASSBACK_S - 1)
    rig.tap(card)
    assert Purse.of(card) == paid
    assert [(r["result"], r["reason"]) for r in rig.records()] == [("accepted", "ok"), ("denied", "already_paid")]


def test_marks_of_other_cards_are_kept_for_the_passback_window(rig: Rig) -> None:
    """Committing one card's mark prunes marks older than the window only, not the others'."""
    first, second = sichuan(), on_overdraft(2000)
    rig.tap(first)
    rig.advance(10)
    rig.tap(second)
    assert rig.services.journal.last(token_of(rig, first), CardMark.PAID) == TAP_DAY
    rig.advance(PASSBACK_S + 1)
    rig.tap(sichuan())
    assert rig.services.journal.last(token_of(rig, second), CardMark.PAID) is None, "older than the window"


def test_an_overdraft_is_recorded_as_own_money_with_the_allowance_apart(rig: Rig) -> None:
    """Own money 100, allowance 500, fare 200: the card counts 600 and 400, the record 100 and -100."""
    card = on_overdraft(100)
    allowance = purse_profile(card).overdraft_limit
    assert allowance == 500
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["fare"]) == ("accepted", FARE)
    assert (record["balance_before"], record["balance_after"], record["overdraft_allowance"]) == (100, -100, 500)
    assert Purse.of(card).balance == -100
    written = PROCESS_RECORD_LAYOUT.parse(card.memory.process_log[0])
    assert written.balance_after == 100 + allowance - FARE, "the card's 0x1E record counts the allowance in"


# ---------------------------------------------------------------------------- torn debits


def test_a_debit_torn_after_the_commit_stays_pending_and_is_recovered_under_its_own_tap(rig: Rig) -> None:
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before, sequence = Purse.of(inner), psam_sequence(rig)
    card.plan(ins=INS_DEBIT, when="after")
    torn_id = rig.tap(card)
    assert card.torn and Purse.of(inner).atc == before.atc + 1, "the card committed the debit"
    assert rig.records() == [], "a debit the card may have made is never recorded as denied"
    [pending] = rig.services.journal.all_pending()
    assert (pending.tap_id, pending.token, pending.region) == (torn_id, token_of(rig, inner), "510100")
    assert rig.signals.wait(1)[0].lines[0] == TAP_AGAIN
    assert rig.signals.shown[0].beep == "warning"

    rig.advance(5)
    rig.tap(card)
    [record] = rig.records()
    assert record["tap_id"] == torn_id and record["time"] == local(TAP_DAY), "the torn tap's id and time"
    assert_paid(record, inner, before, rig, sequence)
    assert (record["recovered"], record["mac2_verified"]) == (True, True)
    assert rig.services.journal.all_pending() == []
    assert rig.services.journal.last(token_of(rig, inner), CardMark.PAID) == TAP_DAY
    assert rig.published == [record]

    rig.advance(5)
    rig.tap(card)
    assert Purse.of(inner).atc == before.atc + 1, "paid once: the next tap is within the passback window"
    assert [r["reason"] for r in rig.records()] == ["ok", "already_paid"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.ONE_BYTE, ins=INS_DEBIT),
        Fault(FaultKind.TRUNCATED, ins=INS_DEBIT),
        Fault(FaultKind.OVERLONG, ins=INS_DEBIT),
        Fault(FaultKind.EXECUTED_STATUS, ins=INS_DEBIT, sw=0x6581),
        Fault(FaultKind.EXECUTED_STATUS, ins=INS_DEBIT, sw=0x6F00),
    ],
    ids=lambda fault: f"{fault.kind.value}-{fault.sw:04X}",
)
def test_a_garbled_answer_after_the_commit_is_charged_once(rig: Rig, fault: Fault) -> None:
    chip = FaultyChip(sichuan())
    inner = chip.card
    assert isinstance(inner, VirtualCard)
    before, sequence = Purse.of(inner), psam_sequence(rig)
    chip.inject(fault)
    torn_id = rig.tap(chip)
    assert chip.struck is not None and chip.struck.executed
    assert rig.records() == []
    assert [p.tap_id for p in rig.services.journal.all_pending()] == [torn_id]
    rig.advance(3)
    rig.tap(chip)
    [record] = rig.records()
    assert record["tap_id"] == torn_id and record["recovered"] is True
    assert_paid(record, inner, before, rig, sequence)


def test_a_debit_torn_before_the_card_saw_it_is_an_attempt_and_the_card_pays_on_return(rig: Rig) -> None:
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    card.plan(ins=INS_DEBIT, when="before")
    torn_id = rig.tap(card)
    assert Purse.of(inner) == before and rig.records() == []
    assert len(rig.services.journal.all_pending()) == 1
    rig.advance(4)
    sequence = psam_sequence(rig)
    again_id = rig.tap(card)
    attempt, paid = rig.records()
    assert (attempt["tap_id"], attempt["time"], attempt["result"], attempt["reason"]) == (
        torn_id,
        local(TAP_DAY),
        "denied",
        "card_removed",
    )
    assert (attempt["card_token"], attempt["region"]) == (token_of(rig, inner), "510100")
    assert attempt["balance_before"] is None and attempt["tac"] is None, "the attempt claims no money"
    assert paid["tap_id"] == again_id and paid["time"] == local(TAP_DAY + dt.timedelta(seconds=4))
    assert_paid(paid, inner, before, rig, sequence)
    assert paid["recovered"] is False
    assert rig.services.journal.all_pending() == []
    assert rig.published == [attempt, paid]


def test_a_status_word_the_card_gives_without_debiting_is_settled_on_return(rig: Rig) -> None:
    """6581 (memory failure) is not a refusal: the tap stays torn until the card proves 9406."""
    chip = FaultyChip(sichuan())
    inner = chip.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    chip.inject(Fault(FaultKind.STATUS, ins=INS_DEBIT, sw=0x6581))
    torn_id = rig.tap(chip)
    assert rig.records() == [] and len(rig.services.journal.all_pending()) == 1
    rig.advance(2)
    rig.tap(chip)
    attempt, paid = rig.records()
    assert (attempt["tap_id"], attempt["reason"]) == (torn_id, "card_removed")
    assert paid["reason"] == "ok" and Purse.of(inner).atc == before.atc + 1


def test_a_card_lost_again_during_recovery_keeps_the_debit_pending(rig: Rig) -> None:
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before, sequence = Purse.of(inner), psam_sequence(rig)
    card.plan(ins=INS_DEBIT, when="after")
    torn_id = rig.tap(card)
    card.plan(ins=INS_PROOF, when="after")
    rig.tap(card)
    assert card.torn and rig.records() == []
    assert [p.tap_id for p in rig.services.journal.all_pending()] == [torn_id]
    rig.tap(card)
    [record] = rig.records()
    assert record["tap_id"] == torn_id
    assert_paid(record, inner, before, rig, sequence)


def test_a_card_lost_after_the_attempt_is_recorded_is_denied_not_torn(rig: Rig) -> None:
    """Once the torn debit is settled as never made, a later failure denies the tap (no money moves)."""
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    card.plan(ins=INS_DEBIT, when="before")
    rig.tap(card)
    card.plan(ins=INS_INITIALIZE, when="before")  # the fresh charge, after GET TRANSACTION PROOF
    rig.tap(card)
    assert [(r["result"], r["reason"]) for r in rig.records()] == [
        ("denied", "card_removed"),
        ("denied", "card_removed"),
    ]
    assert rig.services.journal.all_pending() == [] and Purse.of(inner) == before


def test_a_recovered_debit_whose_mac2_the_psam_refuses_is_still_a_paid_ride(rig: Rig) -> None:
    """The PSAM refusing the recovered MAC2 does not undo the card's debit: its TAC stands."""
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam"))
    with Rig(rig.config.terminal.state_dir.parent / "mac2", psam=psam) as terminal:
        card = TearingCard(sichuan())
        inner = card.card
        assert isinstance(inner, VirtualCard)
        before, sequence = Purse.of(inner), psam_sequence(terminal)
        card.plan(ins=INS_DEBIT, when="after")
        torn_id = terminal.tap(card)
        psam.inject(Fault(FaultKind.STATUS, ins=INS_VERIFY_MAC2, sw=0x9302))
        terminal.tap(card)
        [record] = terminal.records()
        assert record["tap_id"] == torn_id
        assert_paid(record, inner, before, terminal, sequence)
        assert (record["recovered"], record["mac2_verified"]) == (True, False)
        assert terminal.services.journal.last(token_of(terminal, inner), CardMark.PAID) == TAP_DAY
        assert terminal.services.journal.last(token_of(terminal, inner), CardMark.NOT_GENUINE) is None


def test_a_recovered_debit_on_the_overdraft_keeps_the_allowance_apart(rig: Rig) -> None:
    card = TearingCard(on_overdraft(100))
    card.plan(ins=INS_DEBIT, when="after")
    rig.tap(card)
    [pending] = rig.services.journal.all_pending()
    assert pending.allowance == 500
    rig.tap(card)
    [record] = rig.records()
    assert (record["balance_before"], record["balance_after"], record["overdraft_allowance"]) == (100, -100, 500)
    assert record["recovered"] is True


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("sw", "reason", "beep"),
    [
        (0x9401, "insufficient_balance", "denied"),
        (0x6985, "purchase_failed", "denied"),
        (0x9403, "purchase_failed", "denied"),
        (0x6A86, "purchase_failed", "denied"),
    ],
)
def test_a_refusal_that_proves_no_debit_closes_the_tap_as_not_debited(
    rig: Rig, sw: int, reason: str, beep: str
) -> None:
    chip = FaultyChip(sichuan())
    inner = chip.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    chip.inject(Fault(FaultKind.STATUS, ins=INS_DEBIT, sw=sw))
    tap_id = rig.tap(chip)
    [record] = rig.records()
    assert (record["tap_id"], record["result"], record["reason"], record["fare"]) == (tap_id, "denied", reason, FARE)
    assert (record["balance_before"], record["balance_after"], record["tac"]) == (before.balance, None, None)
    assert Purse.of(inner) == before
    assert rig.services.journal.all_pending() == [], "the journalled debit is settled as never made"
    assert rig.services.journal.last(token_of(rig, inner), CardMark.NOT_GENUINE) is None
    assert rig.services.journal.last(token_of(rig, inner), CardMark.PAID) is None
    assert rig.signals.wait(1)[0].beep == beep
    rig.advance(5)
    rig.tap(chip)
    assert Purse.of(inner).atc == before.atc + 1, "not marked: the card is charged at its next tap"


def test_a_card_refusing_mac1_is_not_genuine_and_refused_at_once_within_the_window(rig: Rig) -> None:
    chip = FaultyChip(sichuan())
    inner = chip.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    chip.inject(Fault(FaultKind.STATUS, ins=INS_DEBIT, sw=0x9302))
    rig.tap(chip)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["balance_before"]) == ("denied", "card_not_genuine", 5000)
    assert rig.services.journal.all_pending() == []
    assert rig.services.journal.last(token_of(rig, inner), CardMark.NOT_GENUINE) == TAP_DAY
    rig.advance(10)
    rig.tap(chip)
    assert Purse.of(inner) == before
    assert [r["reason"] for r in rig.records()] == ["card_not_genuine", "card_not_genuine"]


def test_a_mac2_the_psam_rejects_is_denied_with_the_fare_and_tac_kept(tmp_path: Path) -> None:
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam"))
    with Rig(tmp_path / "bus", psam=psam) as rig:
        card = sichuan()
        before, sequence = Purse.of(card), psam_sequence(rig)
        psam.inject(Fault(FaultKind.STATUS, ins=INS_VERIFY_MAC2, sw=0x9302))
        rig.tap(card)
        [record] = rig.records()
        after = Purse.of(card)
        assert after.tac is not None and before.balance - after.balance == FARE, "the card did debit"
        assert (record["result"], record["reason"], record["fare"]) == ("denied", "mac2_invalid", FARE)
        assert (record["tac"], record["atc"], record["psam_sequence"]) == (
            after.tac.hex().upper(),
            before.atc,
            sequence,
        )
        assert (record["balance_before"], record["balance_after"]) == (before.balance, after.balance)
        assert (record["mac2_verified"], record["recovered"]) == (False, False)
        assert rig.services.journal.all_pending() == []
        assert rig.services.journal.last(token_of(rig, card), CardMark.NOT_GENUINE) == TAP_DAY
        assert rig.services.journal.last(token_of(rig, card), CardMark.PAID) is None
        assert rig.signals.wait(1)[0].lines[0] == SEE_STAFF
        rig.advance(10)
        rig.tap(card)
        assert Purse.of(card) == after, "never charged again within the window"
        assert [r["reason"] for r in rig.records()] == ["mac2_invalid", "card_not_genuine"]


def test_a_mac2_answer_the_psam_garbles_leaves_a_paid_ride_unverified(tmp_path: Path) -> None:
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam"))
    with Rig(tmp_path / "bus", psam=psam) as rig:
        card = sichuan()
        before, sequence = Purse.of(card), psam_sequence(rig)
        psam.inject(Fault(FaultKind.ONE_BYTE, ins=INS_VERIFY_MAC2))
        rig.tap(card)
        [record] = rig.records()
        assert_paid(record, card, before, rig, sequence)
        assert record["mac2_verified"] is False
        assert rig.services.journal.last(token_of(rig, card), CardMark.PAID) == TAP_DAY


@pytest.mark.parametrize(
    ("fault", "reason", "beep"),
    [
        (Fault(FaultKind.TEAR_BEFORE, ins=INS_INITIALIZE), "card_removed", "warning"),
        (Fault(FaultKind.STATUS, ins=INS_INITIALIZE, sw=0x6F00), "purchase_failed", "denied"),
    ],
    ids=["tear", "status"],
)
def test_a_purchase_stopped_before_the_journal_is_denied_claiming_no_money(
    rig: Rig, fault: Fault, reason: str, beep: str
) -> None:
    chip = FaultyChip(sichuan())
    inner = chip.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    chip.inject(fault)
    rig.tap(chip)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["fare"], record["balance_before"]) == (
        "denied",
        reason,
        FARE,
        None,
    )
    assert record["card_token"] == token_of(rig, inner)
    assert Purse.of(inner) == before and rig.services.journal.all_pending() == []
    assert rig.signals.wait(1)[0].beep == beep


def test_a_psam_refusing_mac1_stops_the_purchase_before_the_journal(tmp_path: Path) -> None:
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam"))
    with Rig(tmp_path / "bus", psam=psam) as rig:
        card = sichuan()
        before = Purse.of(card)
        psam.inject(Fault(FaultKind.STATUS, ins=INS_MAC1, sw=0x6985))
        rig.tap(card)
        [record] = rig.records()
        assert (record["result"], record["reason"]) == ("denied", "purchase_failed")
        assert Purse.of(card) == before and rig.services.journal.all_pending() == []


# ---------------------------------------------------------------------------- the PSAM's terminal number


def terminal_number_reads(rig: Rig) -> int:
    return sum(1 for apdu in rig.psam_chip.commands if apdu.startswith(READ_TERMINAL_NUMBER))


def test_the_psam_terminal_number_is_read_once_per_sam_channel(rig: Rig) -> None:
    first, second = sichuan(), on_overdraft(2000)
    rig.tap(first)
    rig.tap(second)
    assert terminal_number_reads(rig) == 1
    for card in (first, second):
        assert Purse.of(card).transactions[0].terminal_id == bytes.fromhex("510100000001")
    rig.psam_reader.insert(rig.psam_chip)  # the PSAM reseated: the open channel is lost
    rig.advance(PASSBACK_S + 1)
    rig.tap(first)
    assert terminal_number_reads(rig) == 1, "the purchase stopped at the lost channel"
    rig.tap(first)
    assert rig.services.psam is not None and rig.services.psam.generation == 2
    assert terminal_number_reads(rig) == 2, "read again on the new channel"
    assert [r["reason"] for r in rig.records()] == ["ok", "ok", "card_removed", "ok"]
    assert Purse.of(first).transactions[0].terminal_id == bytes.fromhex("510100000001")


def test_the_terminal_number_read_on_a_reopened_channel_is_kept_for_the_next_tap(rig: Rig) -> None:
    first, second = sichuan(), on_overdraft(2000)
    rig.tap(first)
    rig.psam_reader.insert(rig.psam_chip)
    rig.advance(PASSBACK_S + 1)
    for card in (first, first, second):
        rig.tap(card)
    assert [r["reason"] for r in rig.records()] == ["ok", "card_removed", "ok", "ok"]
    assert terminal_number_reads(rig) == 2, "once per SAM channel"


def test_a_psam_swapped_for_another_gives_its_own_terminal_number_to_the_next_charge(rig: Rig) -> None:
    card = sichuan()
    rig.tap(card)
    other = dataclasses.replace(load_psam_profile("demo-psam"), terminal_id=bytes.fromhex("510100000002"))
    rig.psam_reader.insert(VirtualPsam(other))  # another PSAM of the same operator, same keys
    for seconds in (PASSBACK_S + 1, 1, 1):
        rig.advance(seconds)
        rig.tap(card)
    reasons = [r["reason"] for r in rig.records()]
    assert "card_not_genuine" not in reasons, reasons
    assert rig.services.journal.last(token_of(rig, card), CardMark.NOT_GENUINE) is None
    assert Purse.of(card).transactions[0].terminal_id == bytes.fromhex("510100000002")


def test_the_terminal_number_of_a_torn_or_refused_purchase_is_kept_too(tmp_path: Path) -> None:
    for fault in (Fault(FaultKind.TEAR_AFTER, ins=INS_DEBIT), Fault(FaultKind.STATUS, ins=INS_DEBIT, sw=0x9401)):
        with Rig(tmp_path / fault.kind.value) as rig:
            chip = FaultyChip(sichuan())
            chip.inject(fault)
            rig.tap(chip)
            rig.tap(on_overdraft(2000))
            assert terminal_number_reads(rig) == 1, fault.kind.value


def test_a_psam_that_does_not_give_its_number_at_open_gives_it_to_the_purchase(tmp_path: Path) -> None:
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam"))
    psam.inject(Fault(FaultKind.STATUS, ins=0xB0, sw=0x6A82))  # READ BINARY 16 as the channel opens
    with Rig(tmp_path / "bus", psam=psam) as rig:
        card = sichuan()
        rig.tap(card)
        assert terminal_number_reads(rig) == 2, "refused at open, then read by the purchase"
        [record] = rig.records()
        assert record["reason"] == "ok"
        assert Purse.of(card).transactions[0].terminal_id == bytes.fromhex("510100000001")


@pytest.mark.parametrize(
    ("card", "shown"),
    [(lambda: holding(sichuan(), 199), 199), (lambda: on_overdraft(-400), 0)],
    ids=["own-money", "allowance-spent"],
)
def test_a_purse_that_cannot_pay_is_refused_by_initialize_and_shows_its_money(
    rig: Rig, card: Callable[[], VirtualCard], shown: int
) -> None:
    """The validator reads no balance first: INITIALIZE answers 9401 (cards.md §2.5), nothing is journalled.

    The allowance-spent card holds -4.00 of its own with an allowance of 5.00: 1.00 is left,
    and GET BALANCE P1 03 (without the allowance) says 0.00.
    """
    inner = card()
    before = Purse.of(inner)
    rig.tap(inner)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["fare"], record["balance_before"]) == (
        "denied",
        "insufficient_balance",
        FARE,
        shown,
    )
    assert record["card_token"] == token_of(rig, inner), "the refused card is named"
    assert Purse.of(inner) == before and rig.services.journal.all_pending() == []
    assert rig.signals.wait(1)[0].lines[0] == "余额不足 Low balance"


def test_a_debit_refused_on_the_overdraft_records_the_purse_s_own_money(rig: Rig) -> None:
    """INITIALIZE counts the allowance into the balance (cards.md §2.5): the record takes it out again."""
    card = FaultyChip(on_overdraft(1000))
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    card.inject(Fault(FaultKind.STATUS, ins=INS_DEBIT, sw=0x9401))
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["balance_before"]) == ("denied", "insufficient_balance", 1000)
    assert Purse.of(inner) == before and rig.services.journal.all_pending() == []


def test_a_torn_debit_is_settled_on_the_e_purse_as_read_without_selecting_it_again(rig: Rig) -> None:
    inner = sichuan()
    card = TearingCard(inner)
    card.plan(ins=INS_DEBIT, when="after")
    rig.tap(card)
    traced = TracedCard(inner)
    rig.tap(traced)
    sent = [apdu[1] for apdu in traced.commands]
    proof = sent.index(INS_PROOF)
    select_purse = max(i for i, ins in enumerate(sent[:proof]) if ins == 0xA4)
    assert 0xB0 not in sent[select_purse:proof], "file 0x15 came with the FCI; nothing is read twice"
    selects = [apdu for apdu in traced.commands if apdu.startswith(SELECT_BY_NAME)]
    assert len(selects) == 2, "the SSSE and the e-purse, once each"


def test_a_torn_debit_already_recorded_does_not_hold_up_the_others(rig: Rig) -> None:
    """Settlement is idempotent: an entry whose tap is queued already is cleared, and the next one settled."""
    when = rig.services.now()
    first = Recovery("03104510100000009991", 41, 0x09, FARE, 5000, bytes(6), 7, when.replace(tzinfo=None))
    second = dataclasses.replace(first, application_serial="03104510100000009992", offline_atc=42)
    journal = rig.services.journal
    journal.begin_debit(PendingDebit("T-RECORDED", first, when, "ab" * 32, "510100"))
    journal.begin_debit(PendingDebit("T-OPEN", second, when + dt.timedelta(seconds=1), "cd" * 32, "510100"))
    rig.services.queue.enqueue(tap_record(1, terminal_id=rig.config.terminal.id) | {"tap_id": "T-RECORDED"})
    rig.advance(TEARING_WINDOW.total_seconds() + 5)
    assert settle_expired(rig.services, TEARING_WINDOW, READER) == 1
    assert journal.all_pending() == []
    assert [r["tap_id"] for r in rig.records()] == ["T-RECORDED", "T-OPEN"]


# ---------------------------------------------------------------------------- cards that never came back


def test_a_torn_debit_whose_card_never_returns_becomes_a_grey_record_after_the_window(rig: Rig) -> None:
    rig.services.hotlist.install(encode_hotlist(3, [b"\x02" * 32]))
    card = TearingCard(on_overdraft(1000))
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before, sequence = Purse.of(inner), psam_sequence(rig)
    card.plan(ins=INS_DEBIT, when="after")
    torn_id = rig.tap(card)
    rig.advance(TEARING_WINDOW.total_seconds() - 1)
    assert settle_expired(rig.services, TEARING_WINDOW, READER) == 0
    assert rig.records() == []
    rig.advance(1)
    assert settle_expired(rig.services, TEARING_WINDOW, "grey-reader") == 1
    [record] = rig.records()
    serial = purse_profile(inner).public.application_serial
    assert {k: record[k] for k in record if record[k] is not None} == {
        "schema_version": 2,
        "record_type": "grey",
        "tap_id": torn_id,
        "terminal_id": rig.config.terminal.id,
        "profile": "bus",
        "reader": "grey-reader",
        "time": local(TAP_DAY),
        "result": "unconfirmed",
        "reason": "debit_unconfirmed",
        "card_token": token_of(rig, inner),
        "region": "500103",
        "fare": FARE,
        "fare_base": FARE,
        "transfer": False,
        "balance_before": before.balance,
        "atc": before.atc,
        "psam_sequence": sequence,
        "overdraft_allowance": 500,
        "application_serial_masked": "*" * (len(serial) - 4) + serial[-4:],
        "hotlist_version": "3",
    }
    assert Purse.of(inner).balance == before.balance - FARE, "the card did pay: the grey record says so"
    assert rig.services.journal.all_pending() == []
    assert rig.published == [record]
    assert settle_expired(rig.services, TEARING_WINDOW, READER) == 0, "settled once"


def test_settling_expired_debits_counts_each_and_skips_those_within_the_window(rig: Rig) -> None:
    first, second = TearingCard(sichuan()), TearingCard(on_overdraft(2000))
    first.plan(ins=INS_DEBIT, when="after")
    rig.tap(first)
    rig.advance(20)
    second.plan(ins=INS_DEBIT, when="after")
    second_id = rig.tap(second)
    rig.advance(15)
    assert settle_expired(rig.services, TEARING_WINDOW, READER) == 1
    assert [p.tap_id for p in rig.services.journal.all_pending()] == [second_id]
    rig.advance(15)
    assert settle_expired(rig.services, TEARING_WINDOW, READER) == 1
    assert [r["record_type"] for r in rig.records()] == ["grey", "grey"]


def test_settling_expired_debits_counts_every_one_it_records(rig: Rig) -> None:
    cards = (TearingCard(sichuan()), TearingCard(on_overdraft(2000)))
    for card in cards:
        card.plan(ins=INS_DEBIT, when="after")
        rig.tap(card)
    rig.advance(TEARING_WINDOW.total_seconds())
    assert settle_expired(rig.services, TEARING_WINDOW, READER) == 2
    assert rig.services.journal.all_pending() == [] and len(rig.records()) == 2


def test_an_expired_debit_already_recorded_is_settled_without_a_second_record(rig: Rig) -> None:
    first, second = TearingCard(sichuan()), TearingCard(on_overdraft(2000))
    first.plan(ins=INS_DEBIT, when="after")
    first_id = rig.tap(first)
    second.plan(ins=INS_DEBIT, when="after")
    rig.tap(second)
    rig.services.queue.enqueue({**tap_record(0, terminal_id=rig.config.terminal.id), "tap_id": first_id})
    rig.advance(60)
    assert settle_expired(rig.services, TEARING_WINDOW, READER) == 1, "the second is still recorded"
    assert rig.services.journal.all_pending() == []
    assert [r["tap_id"] for r in rig.records()][:1] == [first_id] and len(rig.records()) == 2


def test_a_queue_that_refuses_the_grey_record_keeps_the_debit_pending(tmp_path: Path) -> None:
    with Rig(tmp_path / "bus", queue={"max_taps": 1}) as rig:
        card = TearingCard(on_overdraft(2000))
        card.plan(ins=INS_DEBIT, when="after")
        torn_id = rig.tap(card)
        rig.services.queue.enqueue(tap_record(0, terminal_id=rig.config.terminal.id))
        rig.advance(60)
        assert settle_expired(rig.services, TEARING_WINDOW, READER) == 0
        assert [p.tap_id for p in rig.services.journal.all_pending()] == [torn_id]
        assert len(rig.records()) == 1


def test_an_already_queued_recovery_settles_the_journal_without_a_second_record(rig: Rig) -> None:
    """A record committed without its settlement (an earlier version): the return only settles."""
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    card.plan(ins=INS_DEBIT, when="after")
    torn_id = rig.tap(card)
    rig.services.queue.enqueue({**tap_record(0, terminal_id=rig.config.terminal.id), "tap_id": torn_id})
    rig.tap(card)
    assert [r["tap_id"] for r in rig.records()] == [torn_id]
    assert rig.services.journal.all_pending() == []


def test_an_already_queued_recovery_still_remembers_that_the_card_paid(rig: Rig) -> None:
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    card.plan(ins=INS_DEBIT, when="after")
    torn_id = rig.tap(card)
    rig.services.queue.enqueue({**tap_record(0, terminal_id=rig.config.terminal.id), "tap_id": torn_id})
    rig.tap(card)
    rig.advance(5)
    rig.tap(card)
    assert Purse.of(inner).atc == before.atc + 1, "paid once, for the torn tap"
    assert rig.services.journal.last(token_of(rig, inner), CardMark.PAID) == TAP_DAY


# ---------------------------------------------------------------------------- the Charger called directly


def charger(rig: Rig) -> Charger:
    return Charger(rig.services, Recorder(rig.services, READER))


def read(rig: Rig, card: CardSide) -> tuple[Transmit, PurseRead]:
    """The card presented and its e-purse read, as the bus kind does before it decides."""
    transmit = rig.present(card).transmit
    purse = read_purse(transmit)
    assert purse.public is not None
    return transmit, purse


def ride(amount: int = FARE) -> Decision:
    return Decision(Outcome.ACCEPTED, Reason.OK, Fare(amount, amount, False, None))


def test_a_charge_without_a_fare_is_a_programming_error(rig: Rig) -> None:
    card = sichuan()
    transmit, purse = read(rig, card)
    assert purse.public is not None
    tap = TapContext("T-NO-FARE", rig.services.now())
    with pytest.raises(ValueError, match=r"^a charge needs a fare$"):
        charger(rig).charge(
            transmit,
            tap,
            purse.public,
            Decision(Outcome.ACCEPTED, Reason.OK),
            CardSeen(None, 5000),
            None,
            key_index=1,
        )
    assert rig.services.journal.all_pending() == []


def test_a_charge_without_a_psam_is_refused_before_anything_is_sent(rig: Rig) -> None:
    card = sichuan()
    before = Purse.of(card)
    transmit, purse = read(rig, card)
    assert purse.public is not None
    rig.services.psam = None
    tap = TapContext("T-NO-PSAM", rig.services.now())
    seen = CardSeen(CardRef("token", "510100"), purse.balance)
    outcome = charger(rig).charge(transmit, tap, purse.public, ride(), seen, None, key_index=1)
    assert outcome == TapOutcome(
        Decision(Outcome.DENIED, Reason.PURCHASE_FAILED, ride().fare),
        CardRef("token", "510100"),
        PurseOutcome(balance=before.balance),
    )
    assert not tap.in_flight and Purse.of(card) == before and rig.services.journal.all_pending() == []


def test_a_charge_journals_the_debit_before_it_is_sent_with_the_card_and_its_allowance(rig: Rig) -> None:
    card = TearingCard(on_overdraft(100))
    transmit, purse = read(rig, card)
    assert purse.public is not None
    card.plan(ins=INS_DEBIT, when="before")
    tap = TapContext("T-JOURNAL", rig.services.now())
    seen = CardSeen(CardRef("token", "500103"), purse.balance)
    outcome = charger(rig).charge(transmit, tap, purse.public, ride(), seen, None, key_index=1)
    assert outcome == TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED, ride().fare), torn=True)
    assert tap.in_flight
    [pending] = rig.services.journal.all_pending()
    assert (pending.tap_id, pending.created_at, pending.token, pending.region, pending.allowance) == (
        "T-JOURNAL",
        TAP_DAY,
        "token",
        "500103",
        500,
    )
    assert (pending.recovery.amount, pending.recovery.balance_before) == (FARE, 100 + 500)


def test_settling_without_a_psam_leaves_the_torn_debit_pending(rig: Rig) -> None:
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    card.plan(ins=INS_DEBIT, when="after")
    torn_id = rig.tap(card)
    rig.services.psam = None
    transmit, purse = read(rig, inner)
    assert purse.public is not None
    tap = TapContext("T-LATER", rig.services.now())
    outcome = charger(rig).settle_torn(transmit, purse.public, tap)
    assert outcome == TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED), torn=True)
    assert tap.in_flight, "a torn debit being settled is never recorded as denied"
    assert [p.tap_id for p in rig.services.journal.all_pending()] == [torn_id] and rig.records() == []


def test_a_card_with_no_torn_debit_goes_on_with_its_tap(rig: Rig) -> None:
    transmit, purse = read(rig, sichuan())
    assert purse.public is not None
    tap = TapContext("T-FRESH", rig.services.now())
    assert charger(rig).settle_torn(transmit, purse.public, tap) is None
    assert not tap.in_flight


@pytest.mark.parametrize(("token", "region"), [(None, "510100"), ("a" * 64, None)])
def test_a_torn_debit_journalled_without_the_card_is_recorded_without_it(
    rig: Rig, token: str | None, region: str | None
) -> None:
    """An earlier journal kept no token (or no region): the record names no card rather than half of one."""
    card = TearingCard(sichuan())
    inner = card.card
    assert isinstance(inner, VirtualCard)
    before = Purse.of(inner)
    card.plan(ins=INS_DEBIT, when="after")
    torn_id = rig.tap(card)
    [pending] = rig.services.journal.all_pending()
    serial = purse_profile(inner).public.application_serial
    recovery = dataclasses.replace(pending.recovery, application_serial=serial)
    rig.services.journal.begin_debit(PendingDebit(torn_id, recovery, pending.created_at, token, region, 0))
    rig.tap(card)
    [record] = rig.records()
    assert (record["tap_id"], record["card_token"], record["region"], record["recovered"]) == (
        torn_id,
        None,
        None,
        True,
    )
    assert record["balance_before"] == before.balance and record["fare"] == FARE


# ---------------------------------------------------------------------------- the terminal killed mid-debit

ROOT = Path(__file__).resolve().parents[2]
CRASH_RUN_TIMEOUT_S = 60.0


def tap_in_a_process_killed_at(workdir: Path, point: str) -> int:
    """One tap by `tests.daemon.fast_crash` with the crash point `point` armed; its exit status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENVIRONMENT_VARIABLE: point}
    states = (workdir / "bus", workdir / "card.json", workdir / "psam.json")
    done = subprocess.run(
        [sys.executable, "-m", "tests.daemon.fast_crash", *map(str, states)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=CRASH_RUN_TIMEOUT_S,
        check=False,
    )
    return done.returncode


@pytest.mark.parametrize(
    ("point", "debited"),
    [
        (CrashPoint.JOURNAL_WRITTEN, False),
        (CrashPoint.DEBIT_ANSWERED, True),
        (CrashPoint.MAC2_VERIFIED, True),
    ],
)
def test_a_terminal_killed_mid_debit_settles_it_once_after_the_restart(
    tmp_path: Path, point: CrashPoint, debited: bool
) -> None:
    """Killed at each durable step of the charge: journal then card, never a record; one debit in the end."""
    fresh = Purse.of(sichuan())
    assert tap_in_a_process_killed_at(tmp_path, point.value) == -signal.SIGKILL, "killed at the crash point"
    card = VirtualCard.from_profile("sichuan", state_path=tmp_path / "card.json")
    assert Purse.of(card).atc == fresh.atc + (1 if debited else 0)
    psam = VirtualPsam.from_profile("demo-psam", state_path=tmp_path / "psam.json")
    with Rig(tmp_path / "bus", psam=psam) as rig:
        assert rig.records() == [], "killed before any record"
        [pending] = rig.services.journal.all_pending()
        rig.advance(5)
        rig.tap(card)
        records = rig.records()
        other = on_overdraft(2000)
        rig.tap(other)
        assert [r["reason"] for r in rig.records()][len(records) :] == ["ok"], "the terminal serves on"
        assert Purse.of(other).balance == 2000 - FARE
    assert Purse.of(card).atc == fresh.atc + 1 and Purse.of(card).balance == fresh.balance - FARE
    paid = records[-1]
    assert (paid["result"], paid["fare"], paid["balance_before"], paid["atc"]) == ("accepted", FARE, 5000, fresh.atc)
    if debited:
        assert len(records) == 1 and (paid["tap_id"], paid["recovered"]) == (pending.tap_id, True)
    else:
        assert [r["tap_id"] for r in records][:1] == [pending.tap_id] and records[0]["reason"] == "card_removed"
        assert len(records) == 2 and paid["recovered"] is False


def test_the_charge_uses_the_configured_psam_key_index(rig: Rig) -> None:
    """The card holds purchase key 01 only: key 02 is refused at INITIALIZE (9403), before the journal."""
    card = sichuan()
    before = Purse.of(card)
    transmit, purse = read(rig, card)
    assert purse.public is not None
    tap = TapContext("T-KEY", rig.services.now())
    seen = CardSeen(CardRef("token", "510100"), purse.balance)
    outcome = charger(rig).charge(transmit, tap, purse.public, ride(), seen, None, key_index=2)
    assert outcome.decision == Decision(Outcome.DENIED, Reason.PURCHASE_FAILED, ride().fare)
    assert Purse.of(card) == before and rig.services.journal.all_pending() == []


def test_a_charge_for_a_card_not_named_is_journalled_without_a_token(rig: Rig) -> None:
    card = TearingCard(sichuan())
    transmit, purse = read(rig, card)
    assert purse.public is not None
    card.plan(ins=INS_DEBIT, when="after")
    tap = TapContext("T-ANON", rig.services.now())
    outcome = charger(rig).charge(transmit, tap, purse.public, ride(), CardSeen(None, 5000), None, key_index=1)
    assert outcome.torn
    [pending] = rig.services.journal.all_pending()
    assert (pending.tap_id, pending.token, pending.region) == ("T-ANON", None, None)


def test_the_charge_sends_initialize_right_after_the_select_reading_no_file_again(tmp_path: Path) -> None:
    """File 0x15, read at the tap's start, is handed to the purchase: no second SELECT or READ BINARY."""
    with Rig(tmp_path / "bus") as rig:
        card = TracedCard(sichuan())
        rig.tap(card)
        instructions = [apdu[1] for apdu in card.commands]
        debit = instructions.index(INS_INITIALIZE)
        assert instructions[debit - 2 :] == [0xA4, 0xB2, INS_INITIALIZE, 0xDC, INS_DEBIT], (
            "the SSSE read first, then the e-purse's SELECT and journey log, then the purchase"
        )
        assert sum(1 for apdu in card.commands if apdu.startswith(SELECT_BY_NAME)) == 2, "SSSE, e-purse"
        assert INS_GET_BALANCE not in instructions, "INITIALIZE answers the balance"
        assert [r["reason"] for r in rig.records()] == ["ok"]
