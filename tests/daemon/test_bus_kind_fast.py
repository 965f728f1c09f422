"""The bus kind's own decisions over the in-process rig: what each verdict sends, records and shows.

The Charger's money path has its own suite (test_charge_fast.py); this one is about
`BusKind.process` around it: which card is read how, which verdict keeps the card's band or
proves the card again, what a refused card's record names, and that a free ride touches no
money. Every tap runs through the daemon's real `TapPipeline`, queue, journal and PSAM
slot on the virtual card and PSAM, with config/bus.toml's rules (bands senior 65 / elder 70,
passback 60 s, transfer discount, whitelist of Chongqing and Chengdu).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from reader.daemon.journal import CardMark
from reader.uplink.hotlist import encode_hotlist
from sscard_sim.card import VirtualCard
from sscard_sim.faults import Fault, FaultKind, FaultyChip
from sscard_sim.psam import VirtualPsam
from tests.daemon.bench import TAP_DAY, TracedCard
from tests.daemon.fast_rig import READER, Purse, Rig

INS_SELECT = 0xA4
INS_INTERNAL_AUTHENTICATE = 0x88
INS_GET_BALANCE = 0x5C
INS_INITIALIZE = 0x50
SELECT_SSSE = bytes.fromhex("00A404000F")
OUT_OF_SERVICE_TEXT = "暂停服务 Out of service"
"""SELECT of the SSSE by its 15-byte AID (cards.md §1.2)."""


@pytest.fixture(autouse=True)
def _named_in_the_logs() -> Iterator[None]:
    with structlog.contextvars.bound_contextvars(tap_id="driven-directly", reader=READER):
        yield


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Rig(tmp_path / "bus") as terminal:
        yield terminal


def token_of(rig: Rig, card: VirtualCard) -> str:
    return rig.services.token(card.profile.ssse.card_number)


def instructions(card: TracedCard) -> list[int]:
    return [apdu[1] for apdu in card.commands]


def test_a_free_rider_is_proven_every_tap_shown_the_balance_and_never_charged(rig: Rig) -> None:
    """Born 1948: elder, 0 %. No purchase proves the card, so the SSSE does, at every tap."""
    inner = VirtualCard.from_profile("elderly")
    card = TracedCard(inner)
    before = Purse.of(inner)
    for _ in range(2):
        card.clear()
        rig.tap(card)
        assert INS_INTERNAL_AUTHENTICATE in instructions(card), "authenticated although the band is known"
        assert INS_INITIALIZE not in instructions(card)
        assert INS_GET_BALANCE in instructions(card), "the balance, for the display"
        rig.advance(3600)
    records = rig.records()
    assert [(r["result"], r["fare"], r["concession"], r["balance_before"]) for r in records] == [
        ("accepted", 0, "elder", 1200)
    ] * 2
    assert all(r["card_token"] == token_of(rig, inner) and r["region"] == "510104" for r in records)
    assert Purse.of(inner) == before
    assert rig.signals.wait(2)[1].lines == ("免费乘车 elder", "余额 12.00")
    assert rig.services.journal.last(token_of(rig, inner), CardMark.PAID) == TAP_DAY.replace(hour=TAP_DAY.hour + 1)


def test_a_repeat_rider_already_paid_is_proven_by_the_ssse_again_and_charged_nothing(rig: Rig) -> None:
    """The kept band serves a charged ride only: a refusal on it reads the SSSE again."""
    inner = VirtualCard.from_profile("sichuan")
    card = TracedCard(inner)
    rig.tap(card)
    paid = Purse.of(inner)
    rig.advance(10)
    card.clear()
    rig.tap(card)
    sent = instructions(card)
    assert sent.count(INS_INTERNAL_AUTHENTICATE) == 1, "proven again: already paid rests on the SSSE"
    assert [apdu[:5] for apdu in card.commands].count(SELECT_SSSE) == 2, "back to the SSSE after the e-purse"
    assert INS_INITIALIZE not in sent and sent[-1] != INS_SELECT, "no SELECT of the e-purse for a refusal"
    first, again = rig.records()
    assert (again["result"], again["reason"], again["fare"], again["balance_before"]) == (
        "denied",
        "already_paid",
        None,
        None,
    )
    assert (
        (again["card_token"], again["region"])
        == (first["card_token"], first["region"])
        == (
            token_of(rig, inner),
            "510100",
        )
    )
    assert Purse.of(inner) == paid


@pytest.mark.parametrize(
    ("profile", "reason"),
    [
        ("no-transport", "no_transport_app"),
        ("locked-transport", "app_locked"),
        ("second-generation", "no_transport_app"),
    ],
)
def test_a_card_whose_purse_cannot_serve_is_refused_with_its_reason_and_named(
    rig: Rig, profile: str, reason: str
) -> None:
    inner = VirtualCard.from_profile(profile)
    card = TracedCard(inner)
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["fare"]) == ("denied", reason, None)
    assert record["card_token"] == token_of(rig, inner) and record["region"] is not None
    assert INS_INITIALIZE not in instructions(card)


def test_a_card_without_the_ssse_is_not_a_social_security_card(rig: Rig) -> None:
    card = FaultyChip(VirtualCard.from_profile("sichuan"))
    card.inject(Fault(FaultKind.STATUS, ins=INS_SELECT, sw=0x6A82))  # SELECT SSSE: file not found
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["card_token"]) == (
        "denied",
        "not_a_social_security_card",
        None,
    )


def test_a_card_number_the_card_does_not_give_is_a_failed_read(rig: Rig) -> None:
    card = FaultyChip(VirtualCard.from_profile("sichuan"))
    card.inject(Fault(FaultKind.STATUS, ins=0xB2, occurrence=2, sw=0x6A83))  # READ RECORD 07: no record
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["card_token"]) == ("denied", "card_read_failed", None)


def test_a_hotlisted_card_is_refused_before_any_money_moves(rig: Rig) -> None:
    inner = VirtualCard.from_profile("sichuan")
    rig.services.hotlist.install(encode_hotlist(7, [bytes.fromhex(token_of(rig, inner))]))
    card = TracedCard(inner)
    before = Purse.of(inner)
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["hotlist_version"]) == ("denied", "hotlisted", "7")
    assert INS_INITIALIZE not in instructions(card) and Purse.of(inner) == before


def test_a_card_pulled_before_it_answers_anything_is_asked_to_tap_again(rig: Rig) -> None:
    card = FaultyChip(VirtualCard.from_profile("sichuan"))
    card.inject(Fault(FaultKind.TEAR_BEFORE, ins=INS_SELECT))
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["fare"], record["card_token"]) == (
        "denied",
        "card_removed",
        None,
        None,
    )
    assert rig.signals.wait(1)[0].beep == "warning"
    assert rig.services.journal.all_pending() == []


def test_a_garbled_answer_before_any_debit_is_a_failed_read(rig: Rig) -> None:
    card = FaultyChip(VirtualCard.from_profile("sichuan"))
    card.inject(Fault(FaultKind.ONE_BYTE, ins=0xB2))  # READ RECORD 01 of EF05: one byte
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["card_token"]) == ("denied", "card_read_failed", None)
    assert rig.signals.wait(1)[0].beep == "denied"


def test_a_psam_missing_when_a_first_rider_must_be_authenticated_is_named(rig: Rig) -> None:
    """The card is not at fault: the record says the PSAM was unavailable, and nothing is charged."""
    rig.psam_reader.remove()
    assert rig.services.psam is not None
    rig.services.psam.open_timeout = 0.0
    inner = VirtualCard.from_profile("sichuan")
    before = Purse.of(inner)
    rig.tap(inner)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["fare"]) == ("denied", "psam_unavailable", None)
    assert Purse.of(inner) == before


def psam_without_ssse_keys() -> FaultyChip:
    """The demo PSAM refusing the SELECT of its SSSE key application (6A82): it cannot authenticate."""
    psam = FaultyChip(VirtualPsam.from_profile("demo-psam"))
    psam.inject(Fault(FaultKind.STATUS, ins=INS_SELECT, occurrence=1, sw=0x6A82))
    return psam


def test_a_psam_that_cannot_authenticate_leaves_the_ride_at_full_fare(tmp_path: Path) -> None:
    """`on_birth_date_unreadable = "full_fare"` (the default): the card is not at fault, no band applies."""
    with Rig(tmp_path / "bus", psam=psam_without_ssse_keys()) as rig:
        inner = VirtualCard.from_profile("elderly")
        before = Purse.of(inner)
        rig.tap(inner)
        [record] = rig.records()
        assert (record["result"], record["reason"], record["fare"], record["concession"]) == (
            "accepted",
            "ok",
            200,
            None,
        )
        assert Purse.of(inner).balance == before.balance - 200


def test_a_psam_that_cannot_authenticate_refuses_the_ride_where_configured(tmp_path: Path) -> None:
    with Rig(tmp_path / "bus", psam=psam_without_ssse_keys()) as rig:
        config = rig.services.config
        assert config.bus is not None
        refusing = config.bus.model_copy(update={"on_birth_date_unreadable": "refuse"})
        rig.services.config = config.model_copy(update={"bus": refusing})
        inner = VirtualCard.from_profile("elderly")
        before = Purse.of(inner)
        rig.tap(inner)
        [record] = rig.records()
        assert (record["result"], record["reason"], record["fare"]) == ("denied", "psam_cannot_authenticate", None)
        assert record["card_token"] == token_of(rig, inner) and Purse.of(inner) == before


def test_a_clone_that_fails_the_authentication_is_not_genuine_and_pays_nothing(rig: Rig) -> None:
    inner = VirtualCard.from_profile("cloned")
    before = Purse.of(inner)
    card = TracedCard(inner)
    rig.tap(card)
    [record] = rig.records()
    assert (record["result"], record["reason"], record["fare"]) == ("denied", "card_not_genuine", None)
    assert INS_INITIALIZE not in instructions(card) and Purse.of(inner) == before


def test_a_full_queue_refuses_the_next_tap_before_the_card_is_read(tmp_path: Path) -> None:
    """Nothing may be charged that cannot be recorded: the terminal says it is out of service."""
    with Rig(tmp_path / "bus", queue={"max_taps": 1}) as rig:
        rig.tap(VirtualCard.from_profile("sichuan"))
        inner = VirtualCard.from_profile("chongqing")
        card = TracedCard(inner)
        before = Purse.of(inner)
        rig.tap(card)
        assert len(rig.records()) == 1 and card.commands == [] and Purse.of(inner) == before
        refused = rig.signals.wait(2)[1]
        assert (refused.lines[0], refused.beep) == (OUT_OF_SERVICE_TEXT, "denied")
