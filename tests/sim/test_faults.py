"""The fault injector on its own, in process: what each fault kind does to a real purchase.

The virtual card and PSAM answer the T-Union purchase (protocols.purchase) directly; the
injector sits in front of the card at DEBIT FOR PURCHASE. Whether the card committed is read
from its memory (balance and offline ATC), what the terminal got from the purchase's result.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import pytest

from protocols.purchase import PurchaseFailure, PurchaseRequest, purchase
from sscard_sim.card import VirtualCard
from sscard_sim.cos import CardTorn
from sscard_sim.faults import Fault, FaultKind, FaultPlanError, FaultyChip
from sscard_sim.psam import VirtualPsam
from sscard_sim.tearing import TearingCard

INS_DEBIT = 0x54
FARE = 200
REQUEST = PurchaseRequest(amount=FARE, time=dt.datetime(2026, 5, 20, 9, 0, 0))


def _purchase(card: FaultyChip) -> object:
    """The purchase's outcome (a result, a failure, or a refusal), judged by the caller."""
    psam = VirtualPsam.from_profile("demo-psam")
    return purchase(card.transmit, psam.transmit, REQUEST)


@pytest.mark.parametrize(
    ("kind", "committed"),
    [
        (FaultKind.TEAR_BEFORE, False),
        (FaultKind.TEAR_AFTER, True),
        (FaultKind.ONE_BYTE, True),
        (FaultKind.TRUNCATED, True),
        (FaultKind.OVERLONG, True),
        (FaultKind.STATUS, False),
        (FaultKind.EXECUTED_STATUS, True),
    ],
)
def test_each_fault_at_debit_commits_or_not_and_the_terminal_never_sees_the_answer(
    kind: FaultKind, committed: bool
) -> None:
    virtual = VirtualCard.from_profile("sichuan")
    before = virtual.memory
    card = FaultyChip(virtual)
    card.inject(Fault(kind, ins=INS_DEBIT))
    result = _purchase(card)
    assert isinstance(result, PurchaseFailure) and result.may_be_debited, result
    after = virtual.memory
    assert (after.offline_atc - before.offline_atc, before.balance - after.balance) == (
        (1, FARE) if committed else (0, 0)
    )
    assert card.struck is not None and card.struck.executed is committed
    assert not card.armed, "a fault strikes once"


def test_the_answers_are_garbled_as_named() -> None:
    answers = {}
    for kind in (FaultKind.ONE_BYTE, FaultKind.TRUNCATED, FaultKind.OVERLONG, FaultKind.EXECUTED_STATUS):
        virtual = VirtualCard.from_profile("sichuan")
        card = FaultyChip(virtual)
        card.inject(Fault(kind, index=1, sw=0x6F00))
        answers[kind] = (card.transmit(bytes.fromhex("0084000008")), card.struck)
    one, _ = answers[FaultKind.ONE_BYTE]
    assert len(one) == 1
    truncated, struck = answers[FaultKind.TRUNCATED]
    assert struck is not None and struck.true_answer is not None
    assert truncated[-2:] == struck.true_answer[-2:] and len(truncated) < len(struck.true_answer)
    overlong, struck = answers[FaultKind.OVERLONG]
    assert struck is not None and struck.true_answer is not None
    assert overlong == struck.true_answer[:-2] + bytes(8) + struck.true_answer[-2:]
    assert answers[FaultKind.EXECUTED_STATUS][0] == bytes.fromhex("6F00")


def test_a_late_answer_is_the_true_answer_after_the_delay() -> None:
    virtual = VirtualCard.from_profile("sichuan")
    card = FaultyChip(virtual)
    card.inject(Fault(FaultKind.LATE, index=1, delay=0.2))
    started = time.monotonic()
    answer = card.transmit(bytes.fromhex("0084000008"))
    assert time.monotonic() - started >= 0.2
    assert card.struck is not None and answer == card.struck.true_answer


def test_kill_terminal_kills_before_the_answer_leaves() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        card = FaultyChip(VirtualCard.from_profile("sichuan"), kill_pid=child.pid)
        card.inject(Fault(FaultKind.KILL_TERMINAL, index=1))
        card.transmit(bytes.fromhex("00A4040000"))
        assert child.wait(1) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_nth_command_and_the_nth_occurrence() -> None:
    card = FaultyChip(VirtualCard.from_profile("sichuan"))
    card.inject(Fault(FaultKind.STATUS, ins=0xA4, occurrence=2, sw=0x6A82))
    select = bytes.fromhex("00A4040000")
    assert card.transmit(select)[-2:] != b"\x6a\x82"
    assert card.transmit(bytes.fromhex("0084000004"))[-2:] == b"\x90\x00"
    assert card.transmit(select) == b"\x6a\x82"
    card.inject(Fault(FaultKind.STATUS, index=2))
    assert card.transmit(select)[-2:] != b"\x6f\x00"
    assert card.transmit(select) == b"\x6f\x00"


def test_a_fault_needs_one_place_and_kill_needs_a_pid() -> None:
    with pytest.raises(FaultPlanError):
        Fault(FaultKind.STATUS)
    with pytest.raises(FaultPlanError):
        Fault(FaultKind.STATUS, ins=0x54, index=3)
    with pytest.raises(FaultPlanError):
        FaultyChip(VirtualCard.from_profile("sichuan")).inject(Fault(FaultKind.KILL_TERMINAL, ins=0x54))


def test_tearing_card_is_the_injector_with_two_kinds() -> None:
    virtual = VirtualCard.from_profile("sichuan")
    card = TearingCard(virtual)
    card.plan(ins=INS_DEBIT, when="after")
    result = _purchase(card)
    assert isinstance(result, PurchaseFailure) and isinstance(result.cause, CardTorn)
    assert card.torn and card.struck is not None and card.struck.executed
    assert virtual.memory.balance == 5000 - FARE
