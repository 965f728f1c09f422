"""The T-Union purchase and its tearing recovery, over stored card and PSAM conversations."""

from __future__ import annotations

import datetime as dt

import pytest

from protocols import InsufficientBalance, MacInvalid, MacTacUnavailable
from protocols import tunion as tu
from protocols.errors import TransportError
from protocols.image import Exchange, Recorder, replay
from protocols.purchase import (
    CappUpdate,
    Declined,
    DifferentCard,
    NotDebited,
    PurchaseFailure,
    PurchaseRequest,
    PurchaseResult,
    Step,
    purchase,
    recover,
)
from tests.protocols.proto_dumps import PUBLIC_15, TUNION_FCI, dump

TIME = dt.datetime(2025, 3, 4, 8, 30, 15)
TERMINAL = "112233445566"
INIT_ANSWER = "0000271000050000000102A1B2C3D4"
MAC1_INPUT = "A1B2C3D40005000000C809202503040830150102000012345678901202002900FFFFFFFF"
PROCESS = bytes(range(48)).hex().upper()
CAPP = (
    tu.CAPP_RECORD_LAYOUT.build(tu.CappRecord(0x2701, tu.CAPP_DATA_LENGTH, 0, 0, bytes(119), 0).sealed()).hex().upper()
)


def card_pairs(debit_answer: str = "AAAAAAAABBBBBBBB9000") -> list[tuple[str, str]]:
    return [
        ("00A4040008A00000063201010500", TUNION_FCI + "9000"),
        ("805003020B01000000C8" + TERMINAL + "0F", INIT_ANSWER + "9000"),
        ("80DC01D080" + CAPP, "9000"),
        ("80DC00F030" + PROCESS, "9000"),
        ("805401000F1234567820250304083015CCCCCCCC08", debit_answer),
    ]


def psam_pairs(mac2_sw: str = "9000") -> list[tuple[str, str]]:
    return [
        ("00A40000028011", "9000"),
        ("00B0960006", TERMINAL + "9000"),
        ("8070000024" + MAC1_INPUT + "08", "12345678CCCCCCCC9000"),
        ("8072000004BBBBBBBB", mac2_sw),
    ]


REQUEST = PurchaseRequest(
    amount=200,
    time=TIME,
    updates=(
        CappUpdate(tu.SFI_CAPP, 0x01, bytes.fromhex(CAPP)),
        CappUpdate(tu.SFI_PROCESS, 0x00, bytes.fromhex(PROCESS)),
    ),
)


def test_capp_purchase_end_to_end() -> None:
    card = Recorder(replay(dump(*card_pairs())))
    outcome = purchase(card, replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(outcome, PurchaseResult), outcome
    assert (outcome.balance_before, outcome.balance_after) == (10000, 9800)
    assert outcome.offline_atc == 5
    assert outcome.terminal_sequence == 0x12345678
    assert outcome.tac == bytes.fromhex("AAAAAAAA")
    assert outcome.mac2_verified
    assert [e.command[:2] for e in card.dump().exchanges][-1] == bytes.fromhex("8054")


def test_mac2_rejected_by_psam_is_reported_on_a_committed_purchase() -> None:
    outcome = purchase(replay(dump(*card_pairs())), replay(dump(*psam_pairs("9302"))), REQUEST)
    assert isinstance(outcome, PurchaseResult)
    assert not outcome.mac2_verified
    assert isinstance(outcome.mac2_error, MacInvalid)


def test_insufficient_balance_stops_at_initialize() -> None:
    pairs = card_pairs()
    pairs[1] = (pairs[1][0], "9401")
    outcome = purchase(replay(dump(*pairs)), replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(outcome, PurchaseFailure)
    assert outcome.step is Step.INITIALIZE
    assert isinstance(outcome.cause, InsufficientBalance)
    assert not outcome.may_be_debited


def test_debit_refused_mac1_is_declined_not_torn() -> None:
    """9302 to DEBIT: the card checked MAC1 and refused before touching its purse."""
    outcome = purchase(replay(dump(*card_pairs("9302"))), replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(outcome, Declined)
    assert isinstance(outcome.cause, MacInvalid)
    assert outcome.recovery.proof_atc == 6


@pytest.mark.parametrize("answer", ["6581", "6F00", "6310", "AAAAAAAA9000", "90", "AAAAAAAABBBBBBBBCC9000"])
def test_any_other_debit_answer_may_be_debited(answer: str) -> None:
    """Memory failure, no diagnosis, a warning, a short, a status-only or an over-long answer."""
    outcome = purchase(replay(dump(*card_pairs(answer))), replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(outcome, PurchaseFailure) and outcome.step is Step.DEBIT
    assert outcome.may_be_debited and outcome.recovery is not None


def test_a_bug_after_the_journal_still_means_may_be_debited() -> None:
    answers = replay(dump(*card_pairs()))

    def broken(apdu: bytes) -> bytes:
        if apdu[:2] == bytes.fromhex("8054"):
            raise RuntimeError("a bug of the reader layer")
        return answers(apdu)

    outcome = purchase(broken, replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(outcome, PurchaseFailure) and outcome.may_be_debited


def test_mac2_unanswered_is_still_a_debit() -> None:
    """The card has debited whatever the PSAM does; a garbled PSAM answer is not a rejection."""
    psam = replay(dump(*psam_pairs()))

    def garbled(apdu: bytes) -> bytes:
        if apdu[:2] == bytes.fromhex("8072"):
            raise RuntimeError("one-byte answer")
        return psam(apdu)

    outcome = purchase(replay(dump(*card_pairs())), garbled, REQUEST)
    assert isinstance(outcome, PurchaseResult)
    assert not outcome.mac2_verified and not outcome.mac2_rejected


def test_process_record_is_built_from_the_cards_own_balance() -> None:
    """INIT_ANSWER's balance is 0x2710 = 10000 fen (overdraft included): 10000 - 200 after."""
    seen: list[tuple[int, bytes]] = []

    def process_record(balance_after: int, terminal: bytes) -> CappUpdate:
        seen.append((balance_after, terminal))
        return CappUpdate(0x1E, 0x00, bytes.fromhex(PROCESS))

    request = PurchaseRequest(
        amount=200,
        time=TIME,
        updates=(CappUpdate(0x1A, 0x01, bytes.fromhex(CAPP)),),
        process_record=process_record,
    )
    outcome = purchase(replay(dump(*card_pairs())), replay(dump(*psam_pairs())), request)
    assert isinstance(outcome, PurchaseResult), outcome
    assert seen == [(9800, bytes.fromhex(TERMINAL))]


class LinkLost(TransportError):
    """The card left the field in the middle of a command."""


def test_torn_debit_then_recovery_with_proof() -> None:
    answers = replay(dump(*card_pairs()))

    def tearing(apdu: bytes) -> bytes:
        if apdu[:2] == bytes.fromhex("8054"):
            raise LinkLost
        return answers(apdu)

    outcome = purchase(tearing, replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(outcome, PurchaseFailure) and outcome.step is Step.DEBIT
    assert isinstance(outcome.cause, LinkLost) and outcome.recovery is not None
    card_again = replay(
        dump(
            ("00A4040008A00000063201010500", TUNION_FCI + "9000"),
            ("805A000902000608", "BBBBBBBBAAAAAAAA9000"),
        )
    )
    psam_again = replay(dump(("8072000004BBBBBBBB", "9000")))
    settled = recover(card_again, psam_again, outcome.recovery)
    assert isinstance(settled, PurchaseResult)
    assert settled.tac == bytes.fromhex("AAAAAAAA") and settled.mac2_verified


def test_recovery_when_debit_never_committed() -> None:
    failure = purchase(replay(dump(*card_pairs("6F00"))), replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(failure, PurchaseFailure) and failure.recovery is not None
    card_again = replay(dump(("00A4040008A00000063201010500", TUNION_FCI + "9000"), ("805A000902000608", "9406")))
    settled = recover(card_again, replay(dump()), failure.recovery)
    assert isinstance(settled, NotDebited)
    assert MacTacUnavailable(0x9406, "x").sw == 0x9406


def test_recovery_refuses_another_card() -> None:
    failure = purchase(replay(dump(*card_pairs("6F00"))), replay(dump(*psam_pairs())), REQUEST)
    assert isinstance(failure, PurchaseFailure) and failure.recovery is not None
    other = tu.PUBLIC_INFO_LAYOUT.parse(bytes.fromhex(PUBLIC_15.replace("789012", "789013")))
    sent: list[Exchange] = []
    card = Recorder(replay(dump()))
    settled = recover(card, replay(dump()), failure.recovery, public=other)
    assert isinstance(settled, PurchaseFailure) and settled.step is Step.SAME_CARD
    assert isinstance(settled.cause, DifferentCard)
    assert card.dump().exchanges == tuple(sent)
