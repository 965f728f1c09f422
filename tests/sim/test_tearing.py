"""Tear the card away at every step of a CAPP purchase, through pcscd: debited once, or not at all.

At each step the card loses power either before it sees the command or after it processed
it (the answer lost). vpcd drops the connection; the card, still on the reader, comes back as
a new insertion, and the terminal settles the purchase the way the protocol says: a failure
before DEBIT is simply not a purchase; a failure at DEBIT is settled by GET TRANSACTION PROOF
(MAC2 and TAC, verified by the PSAM, or 9406). Two more points tear inside DEBIT itself,
around the card's commit. Every time the card's memory, its answers through pcscd and its
state file must agree on one of the two outcomes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocols.exchange import command, exchange
from protocols.ppse import select_ppse
from protocols.purchase import NotDebited, PurchaseFailure, PurchaseRequest, PurchaseResult, Step, purchase, recover
from protocols.tunion import TRANSACTION_RECORD_LAYOUT, get_transaction_proof, select_tunion
from protocols.tunion_read import read_tunion
from sscard_sim.card import VirtualCard
from sscard_sim.pcscd import VPCD_PORTS, PcscdBench
from sscard_sim.state import CardMemory
from sscard_sim.tearing import TearingCard, When
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT0, wait_for_state
from tests.sim.pcsc_client import CardGone, PcscChannel
from tests.sim.test_card_semantics import capp_updates

FARE = 150
WHEN = dt.datetime(2025, 6, 2, 7, 45, 10)


@dataclass(frozen=True)
class TearPoint:
    label: str
    ins: int | None = None
    when: When = "before"
    occurrence: int = 1
    inside: str | None = None
    debited: bool = False


POINTS = [
    TearPoint("before SELECT", 0xA4),
    TearPoint("after SELECT", 0xA4, "after"),
    TearPoint("before INITIALIZE", 0x50),
    TearPoint("after INITIALIZE", 0x50, "after"),
    TearPoint("before UPDATE 1A", 0xDC),
    TearPoint("after UPDATE 1A", 0xDC, "after"),
    TearPoint("before UPDATE 1E", 0xDC, occurrence=2),
    TearPoint("after UPDATE 1E", 0xDC, "after", occurrence=2),
    TearPoint("before DEBIT", 0x54),
    TearPoint("inside DEBIT before commit", inside="debit:before_commit"),
    TearPoint("inside DEBIT after commit", inside="debit:after_commit", debited=True),
    TearPoint("after DEBIT", 0x54, "after", debited=True),
]


@dataclass
class Bench:
    card: TearingCard
    virtual: VirtualCard
    state_path: Path


@pytest.fixture(scope="module")
def bench(pcscd: PcscdBench, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    state_path = tmp_path_factory.mktemp("tearing") / "card.json"
    virtual = VirtualCard.from_profile("sichuan", state_path=state_path)
    card = TearingCard(virtual)
    link = VpcdLink(card, port=VPCD_PORTS[SLOT0])
    link.insert()
    assert wait_for_state(SLOT0, present=True)
    yield Bench(card, virtual, state_path)
    link.remove()
    wait_for_state(SLOT0, present=False)


def reconnect(channel: PcscChannel, timeout: float = 5.0) -> None:
    """Wait until the torn card is back on the reader and answers."""
    deadline = time.monotonic() + timeout
    while True:
        channel.disconnect()
        try:
            channel.connect()
            exchange(channel.transmit, select_ppse())
            return
        except CardGone:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("point", POINTS, ids=[p.label for p in POINTS])
def test_torn_purchase_is_applied_once_or_not_at_all(bench: Bench, psam: PcscChannel, point: TearPoint) -> None:
    before: CardMemory = bench.virtual.memory
    if point.inside is None:
        assert point.ins is not None
        bench.card.plan(point.ins, point.when, point.occurrence)
    else:
        bench.virtual.tear_at = {point.inside}
    with PcscChannel(SLOT0) as channel:
        try:
            request = PurchaseRequest(FARE, WHEN, updates=capp_updates(0x5A))
            outcome = purchase(channel.transmit, psam.transmit, request)
        finally:
            bench.virtual.tear_at = set()
        assert isinstance(outcome, PurchaseFailure), "the tear must interrupt the purchase"
        assert isinstance(outcome.cause, CardGone)
        assert bench.card.torn or point.inside is not None
        assert outcome.may_be_debited == (outcome.step is Step.DEBIT)
        reconnect(channel)

        if outcome.recovery is not None:
            settled = recover(channel.transmit, psam.transmit, outcome.recovery)
            if point.debited:
                assert isinstance(settled, PurchaseResult), settled
                assert settled.mac2_verified, settled.mac2_error
                assert len(settled.tac) == 4
            else:
                assert isinstance(settled, NotDebited), settled
        else:
            command(channel.transmit, select_tunion(), "SELECT")
            proof = exchange(channel.transmit, get_transaction_proof(before.offline_atc + 1))
            assert proof.sw == 0x9406

        after = bench.virtual.memory
        image = read_tunion(channel.transmit)
        assert image is not None
        if point.debited:
            assert after.balance == before.balance - FARE
            assert after.offline_atc == before.offline_atc + 1
            assert after.last_proof is not None and after.last_proof.atc == before.offline_atc + 1
            assert image.transactions[0].atc == before.offline_atc + 1
            assert image.transactions[0].amount == FARE
            assert image.transactions[1:] == tuple(read_prefix(before))
            assert len(after.process_log) == min(len(before.process_log) + 1, 30)
            assert after.capp_records[0][6] == 0x5A
        else:
            assert after == before
            assert image.transactions == tuple(read_prefix(before))
        assert image.balance == after.balance

    reloaded = VirtualCard.from_profile("sichuan", state_path=bench.state_path).memory
    assert reloaded == after or (not bench.state_path.exists() and after == VirtualCard.from_profile("sichuan").memory)


def read_prefix(memory: CardMemory) -> list[object]:
    return [TRANSACTION_RECORD_LAYOUT.parse(record) for record in memory.transactions][:9]
