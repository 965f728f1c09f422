"""What a purchase and its recovery report, field by field and step by step.

The journal, the tap record and the clearing file are written from these values, so each is
pinned: the committed result carries the request's amount, time and terminal, the card's
serial and the MAC2 it sent; a failure names the step it stopped at (the step decides
whether the card may have paid) and keeps what recovery needs. The conversations are the
stored card and PSAM dumps of test_proto_purchase.py.
"""

from __future__ import annotations

import pytest

from protocols import tunion as tu
from protocols.image import Dump, replay
from protocols.purchase import (
    DifferentCard,
    NotDebited,
    PurchaseFailure,
    PurchaseResult,
    Recovery,
    Step,
    purchase,
    recover,
)
from tests.protocols.proto_dumps import PUBLIC_15, TUNION_FCI, dump
from tests.protocols.test_proto_purchase import REQUEST, TERMINAL, TIME, card_pairs, psam_pairs

SERIAL = tu.PUBLIC_INFO_LAYOUT.parse(bytes.fromhex(PUBLIC_15)).application_serial
SELECT_TUNION = ("00A4040008A00000063201010500", TUNION_FCI + "9000")
PROOF = "805A000902000608"


def test_a_committed_purchase_reports_what_was_debited_and_where() -> None:
    seen: list[Recovery] = []
    outcome = purchase(replay(dump(*card_pairs())), replay(dump(*psam_pairs())), REQUEST, before_debit=seen.append)
    assert isinstance(outcome, PurchaseResult), outcome
    assert (outcome.application_serial, outcome.amount, outcome.time) == (SERIAL, 200, TIME)
    assert outcome.terminal_id == bytes.fromhex(TERMINAL)
    assert outcome.mac2 == bytes.fromhex("BBBBBBBB")
    (journalled,) = seen
    assert (journalled.application_serial, journalled.amount, journalled.proof_atc) == (SERIAL, 200, 6)
    assert journalled.terminal_id == bytes.fromhex(TERMINAL) and journalled.time == TIME


@pytest.mark.parametrize(
    ("side", "index", "step"),
    [
        pytest.param("card", 0, Step.SELECT, id="select"),
        pytest.param("psam", 0, Step.PSAM_SELECT, id="psam-select"),
        pytest.param("psam", 1, Step.PSAM_TERMINAL_NUMBER, id="psam-terminal-number"),
        pytest.param("psam", 2, Step.MAC1, id="mac1"),
        pytest.param("card", 2, Step.UPDATE_CAPP, id="update-capp"),
    ],
)
def test_a_failure_before_the_debit_names_its_step_and_cannot_have_debited(side: str, index: int, step: Step) -> None:
    card, psam = card_pairs(), psam_pairs()
    pairs = card if side == "card" else psam
    pairs[index] = (pairs[index][0], "6F00")
    outcome = purchase(replay(dump(*card)), replay(dump(*psam)), REQUEST)
    assert isinstance(outcome, PurchaseFailure), outcome
    assert outcome.step is step
    assert not outcome.may_be_debited


def torn() -> Recovery:
    failure = purchase(replay(dump(*card_pairs("6F00"))), replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(failure, PurchaseFailure) and failure.recovery is not None
    return failure.recovery


def test_recovery_of_a_debit_never_committed_keeps_the_torn_debit() -> None:
    recovery = torn()
    settled = recover(replay(dump(SELECT_TUNION, (PROOF, "9406"))), replay(dump()), recovery)
    assert isinstance(settled, NotDebited) and settled.recovery == recovery


def test_recovery_names_both_cards_when_another_one_comes_back() -> None:
    recovery = torn()
    other = tu.PUBLIC_INFO_LAYOUT.parse(bytes.fromhex(PUBLIC_15.replace("789012", "789013")))
    settled = recover(replay(dump()), replay(dump()), recovery, public=other)
    assert isinstance(settled, PurchaseFailure) and isinstance(settled.cause, DifferentCard)
    assert (settled.cause.expected, settled.cause.found) == (SERIAL, other.application_serial)
    assert settled.cause.expected != settled.cause.found
    assert settled.recovery == recovery


def test_recovery_selecting_the_psam_first() -> None:
    recovery = torn()
    card = dump(SELECT_TUNION, (PROOF, "BBBBBBBBAAAAAAAA9000"))
    psam = dump(("00A40000028011", "9000"), ("8072000004BBBBBBBB", "9000"))
    settled = recover(replay(card), replay(psam), recovery, select_psam=True)
    assert isinstance(settled, PurchaseResult) and settled.mac2_verified
    refused = recover(replay(card), replay(dump(("00A40000028011", "6A82"))), recovery, select_psam=True)
    assert isinstance(refused, PurchaseFailure) and refused.step is Step.PSAM_SELECT
    assert refused.recovery == recovery


@pytest.mark.parametrize(
    ("card", "step"),
    [
        pytest.param(dump(("00A4040008A00000063201010500", "6F00")), Step.SELECT, id="select"),
        pytest.param(dump(SELECT_TUNION, (PROOF, "6F00")), Step.TRANSACTION_PROOF, id="transaction-proof"),
    ],
)
def test_a_failed_recovery_names_its_step_and_keeps_the_torn_debit(card: Dump, step: Step) -> None:
    recovery = torn()
    settled = recover(replay(card), replay(dump()), recovery)
    assert isinstance(settled, PurchaseFailure) and settled.step is step
    assert settled.recovery == recovery
