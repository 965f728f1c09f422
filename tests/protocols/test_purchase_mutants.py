"""What a purchase and its recovery report, field by field and step by step.

The journal, the tap record and the clearing file are written from these values, so each is
pinned: the committed result carries the request's amount, time and terminal, the card's
serial and the MAC2 it sent; a failure names the step it stopped at (the step decides
whether the card may have paid) and keeps what recovery needs. The conversations are the
stored card and PSAM dumps of test_proto_purchase.py.
"""

from __future__ import annotations

import dataclasses

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
from protocols.status import CardStatusError
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


# -- what the card and the PSAM are sent when the request or the card differs from the usual ------
#
# The APDUs below are written out from cards.md, not built with our layouts:
# - §2.5 INITIALIZE FOR (CAPP) PURCHASE `80 50 P1 02 0B | key index | amount | terminal | 0F`,
#   "P1 = 03 CAPP purchase, 01 simple purchase";
# - §2.6 MAC1 input `80 70 00 00 24`: card random ‖ ATC ‖ amount ‖ trans type (06 or 09) ‖
#   date-time ‖ key version ‖ algorithm id ‖ serial (0x15 bytes 12-19) ‖ issuer id (8);
# - §2.7 GET TRANSACTION PROOF `80 5A 00 <P2 = trans type: 06 simple / 09 CAPP> 02 | ATC | 08`;
# - §2.3 file 0x15 by READ BINARY `00 B0 95 00 1E` (SHM `Transport_GetFiles15`).

INIT_ANSWER = "0000271000050000000102A1B2C3D4"  # balance 10000, ATC 5, key version 01, alg 02, random
MAC1_HEAD = "A1B2C3D40005000000C8"  # card random, ATC 0005, amount 200 fen
MAC1_TAIL = "20250304083015010200001234567890120200"  # time, key version, algorithm id, serial, issuer...
DEBIT = "805401000F1234567820250304083015CCCCCCCC08"
# An FCI with the DF name only: no 9F0C, so the terminal must read file 0x15 itself.
FCI_WITHOUT_PUBLIC = "6F0A8408A000000632010105"
READ_PUBLIC = ("00B095001E", PUBLIC_15 + "9000")


def test_a_card_whose_fci_lacks_the_public_file_is_charged_after_reading_file_15() -> None:
    card = card_pairs()
    card[0] = ("00A4040008A00000063201010500", FCI_WITHOUT_PUBLIC + "9000")
    outcome = purchase(replay(dump(card[0], READ_PUBLIC, *card[1:])), replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(outcome, PurchaseResult), outcome
    assert outcome.application_serial == SERIAL


def test_a_torn_debit_on_a_card_whose_fci_lacks_the_public_file_is_still_recovered() -> None:
    recovery = torn()
    card = dump(("00A4040008A00000063201010500", FCI_WITHOUT_PUBLIC + "9000"), READ_PUBLIC, (PROOF, "9406"))
    settled = recover(replay(card), replay(dump()), recovery)
    assert isinstance(settled, NotDebited) and settled.recovery == recovery


def test_a_terminal_id_given_in_the_request_goes_into_initialize_and_the_psam_is_not_asked() -> None:
    given = "A1A2A3A4A5A6"
    card = card_pairs()
    card[1] = ("805003020B01000000C8" + given + "0F", INIT_ANSWER + "9000")
    psam = [pair for pair in psam_pairs() if not pair[0].startswith("00B096")]  # no READ terminal number
    request = dataclasses.replace(REQUEST, terminal_id=bytes.fromhex(given))
    outcome = purchase(replay(dump(*card)), replay(dump(*psam)), request)
    assert isinstance(outcome, PurchaseResult), outcome
    assert outcome.terminal_id == bytes.fromhex(given)


def test_an_issuer_id_given_in_the_request_replaces_the_cards_in_the_mac1_input() -> None:
    issuer = "0102030405060708"
    psam = psam_pairs()
    psam[2] = ("8070000024" + MAC1_HEAD + "09" + MAC1_TAIL[:-4] + issuer + "08", "12345678CCCCCCCC9000")
    request = dataclasses.replace(REQUEST, issuer_id=bytes.fromhex(issuer))
    outcome = purchase(replay(dump(*card_pairs())), replay(dump(*psam)), request)
    assert isinstance(outcome, PurchaseResult), outcome


def simple_pairs(debit_answer: str = "AAAAAAAABBBBBBBB9000") -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A simple purchase (P1 01, transaction type 06): no UPDATE CAPP DATA CACHE is sent."""
    card = [
        SELECT_TUNION,
        ("805001020B01000000C8" + TERMINAL + "0F", INIT_ANSWER + "9000"),
        (DEBIT, debit_answer),
    ]
    psam = psam_pairs()
    psam[2] = ("8070000024" + MAC1_HEAD + "06" + MAC1_TAIL[:-4] + "02002900FFFFFFFF" + "08", "12345678CCCCCCCC9000")
    return card, psam


def test_a_simple_purchase_sends_p1_01_and_type_06_and_no_capp_update() -> None:
    card, psam = simple_pairs()
    request = dataclasses.replace(REQUEST, capp=False)
    outcome = purchase(replay(dump(*card)), replay(dump(*psam)), request)
    assert isinstance(outcome, PurchaseResult), outcome
    assert (outcome.balance_before, outcome.balance_after) == (10000, 9800)


def test_a_torn_simple_purchase_asks_for_the_proof_of_a_type_06_transaction() -> None:
    card, psam = simple_pairs(debit_answer="6F00")
    failure = purchase(replay(dump(*card)), replay(dump(*psam)), dataclasses.replace(REQUEST, capp=False))
    assert isinstance(failure, PurchaseFailure) and failure.recovery is not None
    assert failure.recovery.transaction_type == 0x06
    settled = recover(replay(dump(SELECT_TUNION, ("805A000602000608", "9406"))), replay(dump()), failure.recovery)
    assert isinstance(settled, NotDebited), settled


# -- what an operator reads when a step fails ---------------------------------------------------
#
# A refused tap is logged with its step and its error (`tap_purchase_failed error=...`); the
# error names the command that got the status word, in the words cards.md uses for it, so the
# log line alone tells which of the card's or the PSAM's commands answered what.


@pytest.mark.parametrize(
    ("side", "index", "name"),
    [
        pytest.param("psam", 0, "PSAM SELECT purchase", id="psam-select"),
        pytest.param("psam", 1, "PSAM READ terminal number", id="psam-terminal-number"),
        pytest.param("card", 1, "INITIALIZE FOR PURCHASE", id="initialize"),
        pytest.param("psam", 2, "PSAM MAC1", id="mac1"),
        pytest.param("card", 2, "UPDATE CAPP DATA CACHE 1A", id="update-capp-1a"),
        pytest.param("card", 3, "UPDATE CAPP DATA CACHE 1E", id="update-capp-1e"),
        pytest.param("card", 4, "DEBIT FOR PURCHASE", id="debit"),
    ],
)
def test_a_failed_step_names_the_command_that_was_refused(side: str, index: int, name: str) -> None:
    card, psam = card_pairs(), psam_pairs()
    pairs = card if side == "card" else psam
    pairs[index] = (pairs[index][0], "6F00")
    outcome = purchase(replay(dump(*card)), replay(dump(*psam)), REQUEST)
    assert isinstance(outcome, PurchaseFailure), outcome
    assert isinstance(outcome.cause, CardStatusError) and outcome.cause.sw == 0x6F00
    assert outcome.cause.command == name
    assert str(outcome.cause).startswith(f"{name}: SW 6F00")


def test_a_mac2_the_psam_refuses_is_reported_with_the_command_that_refused_it() -> None:
    outcome = purchase(replay(dump(*card_pairs())), replay(dump(*psam_pairs(mac2_sw="6F00"))), REQUEST)
    assert isinstance(outcome, PurchaseResult) and not outcome.mac2_verified
    assert isinstance(outcome.mac2_error, CardStatusError)
    assert outcome.mac2_error.command == "PSAM VERIFY MAC2"


def test_a_failed_recovery_names_the_command_that_was_refused() -> None:
    recovery = torn()
    proof = recover(replay(dump(SELECT_TUNION, (PROOF, "6F00"))), replay(dump()), recovery)
    assert isinstance(proof, PurchaseFailure) and isinstance(proof.cause, CardStatusError)
    assert proof.cause.command == "GET TRANSACTION PROOF"
    card = dump(SELECT_TUNION, (PROOF, "BBBBBBBBAAAAAAAA9000"))
    psam = recover(replay(card), replay(dump(("00A40000028011", "6F00"))), recovery, select_psam=True)
    assert isinstance(psam, PurchaseFailure) and isinstance(psam.cause, CardStatusError)
    assert psam.cause.command == "PSAM SELECT purchase"


def test_another_card_is_named_as_such_in_the_error() -> None:
    other = tu.PUBLIC_INFO_LAYOUT.parse(bytes.fromhex(PUBLIC_15.replace("789012", "789013")))
    settled = recover(replay(dump()), replay(dump()), torn(), public=other)
    assert isinstance(settled, PurchaseFailure)
    assert str(settled.cause) == "a different card was presented"
