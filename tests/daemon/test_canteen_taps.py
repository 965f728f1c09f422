"""A community canteen through pcscd and vpcd: the band discount and its birthday, the cap per
meal period (kept over a restart), both payment modes, a price from the POS and a fixed one.

The elderly card's holder was born on 1948-03-08: 79 on 2028-03-07 (band "senior", 80 %),
80 on 2028-03-08 (band "elder", 50 %). The Sichuan card's holder (born 1990) is in no band.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocols.tunion import PROCESS_RECORD_LAYOUT
from reader.config import Config
from sscard_sim.card import VirtualCard
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import ManualClock, Tap, Terminal, committed
from tests.daemon.kind_bench import api_client, kind_config, top_up
from tests.support.waiting import wait_until

ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
BEFORE_80TH = dt.datetime(2028, 3, 7, 11, 30, tzinfo=ZONE)
"""Lunch on the day before the elderly holder's 80th birthday."""

MEALS = [
    {"name": "lunch", "start": "11:00", "end": "13:30"},
    {"name": "dinner", "start": "17:00", "end": "19:30"},
]
BANDS = [{"name": "senior", "min_age": 60, "percent": 80}, {"name": "elder", "min_age": 80, "percent": 50}]


def canteen(payment: str, price: int | None) -> dict[str, Any]:
    section: dict[str, Any] = {
        "accepted_regions": ["51", "50"],
        "payment": payment,
        "bands": BANDS,
        "meals": MEALS,
        "discounted_meals": 1,
        "repeat_seconds": 30,
        "canteen_code": "12",
    }
    if price is not None:
        section["price"] = price
    return section


def goto(clock: ManualClock, when: dt.datetime) -> None:
    """Move the terminal's clock on to `when`."""
    clock.advance((when - clock()).total_seconds())


# --------------------------------------------------------------------------- charged to the purse


@dataclass
class PurseRun:
    config: Config
    taps: dict[str, Tap]
    queued: list[dict[str, Any]]
    newest_process_record: bytes


def purse_run(workdir: Path) -> PurseRun:
    config = kind_config("canteen", workdir, canteen("purse", 600), api=True)
    clock = ManualClock(BEFORE_80TH)
    elderly = top_up(VirtualCard.from_profile("elderly"), 10_000)
    sichuan = VirtualCard.from_profile("sichuan")
    taps: dict[str, Tap] = {}
    with Terminal(config, clock) as terminal:
        taps["senior lunch"] = terminal.tap(elderly)
        clock.advance(10)
        taps["double tap"] = terminal.tap(elderly)
    clock.advance(50)
    with Terminal(config, clock) as terminal:  # the cap is kept over a restart
        taps["second lunch"] = terminal.tap(elderly)
        taps["no band"] = terminal.tap(sichuan)
        taps["expired"] = terminal.tap(VirtualCard.from_profile("expired"))
        goto(clock, BEFORE_80TH.replace(hour=15, minute=0))
        taps["between meals"] = terminal.tap(elderly)
        goto(clock, BEFORE_80TH.replace(hour=17, minute=30))
        taps["senior dinner"] = terminal.tap(elderly)
        goto(clock, BEFORE_80TH.replace(day=8))  # the 80th birthday
        taps["elder lunch"] = terminal.tap(elderly)
        goto(clock, BEFORE_80TH.replace(day=8, hour=17, minute=30))
        with api_client(config) as pos:
            assert pos.put("/v1/canteen/price", json={"amount": 1000}).status_code == 200
            taps["dinner at the POS's price"] = terminal.tap(elderly)
            left = pos.get("/v1/canteen/price").json()
        assert left["amount"] is None, "the price of a served meal is used up"
    return PurseRun(config, taps, committed(config), elderly.memory.process_log[0])


@pytest.fixture(scope="module")
def charged(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> PurseRun:
    return purse_run(tmp_path_factory.mktemp("canteen-purse"))


EXPECTED_PURSE = {
    # tap: (result, reason, fare, band)
    "senior lunch": ("accepted", "meal_charged", 480, "senior"),
    "double tap": ("denied", "already_paid", None, None),
    "second lunch": ("accepted", "meal_discount_used", 600, None),
    "no band": ("accepted", "meal_charged", 600, None),
    "expired": ("denied", "expired", None, None),
    "between meals": ("accepted", "meal_charged", 600, None),
    "senior dinner": ("accepted", "meal_charged", 480, "senior"),
    "elder lunch": ("accepted", "meal_charged", 300, "elder"),
    "dinner at the POS's price": ("accepted", "meal_charged", 500, "elder"),
}


@pytest.mark.parametrize("name", EXPECTED_PURSE)
def test_purse_meal_decision_and_debit(charged: PurseRun, name: str) -> None:
    result, reason, fare, band = EXPECTED_PURSE[name]
    tap = charged.taps[name]
    record = tap.record
    assert (record["profile"], record["result"], record["reason"]) == ("canteen", result, reason)
    assert record["concession"] == band
    assert tap.before is not None and tap.after is not None
    if result == "accepted":
        assert record["fare"] == fare
        assert tap.before.balance - tap.after.balance == fare, "the purse paid the price shown"
        assert record["balance_after"] == tap.after.balance and record["tac"]
    else:
        assert tap.after == tap.before, "a refused meal debits nothing"


def test_the_display_shows_the_band_and_the_price(charged: PurseRun) -> None:
    (senior,) = charged.taps["senior lunch"].signals
    assert senior.lines == ("扣款 4.80 senior", f"余额 {95.20:.2f}")
    (full,) = charged.taps["second lunch"].signals
    assert full.lines[0] == "扣款 6.00 优惠已用"
    assert not senior.open_gate


def test_the_meal_is_logged_on_the_card_as_industry_other(charged: PurseRun) -> None:
    record = PROCESS_RECORD_LAYOUT.parse(charged.newest_process_record)
    assert record.industry == 0x00
    assert record.amount == 500
    assert record.line_station[:2] == bytes.fromhex("0012")


def test_every_tap_is_queued(charged: PurseRun) -> None:
    assert [r["tap_id"] for r in charged.queued] == [t.record["tap_id"] for t in charged.taps.values()]


# --------------------------------------------------------------------------- paid at the POS


@dataclass
class PosRun:
    taps: dict[str, Tap]
    answers: dict[str, dict[str, Any]]
    price_after: dict[str, Any]


def pos_run(workdir: Path) -> PosRun:
    config = kind_config("canteen", workdir, canteen("pos", None), api=True)
    clock = ManualClock(BEFORE_80TH)
    elderly = VirtualCard.from_profile("elderly")
    taps: dict[str, Tap] = {}
    answers: dict[str, dict[str, Any]] = {}
    with Terminal(config, clock) as terminal, api_client(config) as pos, ThreadPoolExecutor(1) as asker:
        assert terminal.daemon is not None and terminal.daemon.services is not None
        requests = terminal.daemon.services.card_requests
        assert requests is not None

        def served(name: str, price: dict[str, Any] | None) -> None:
            if price is not None:
                assert pos.put("/v1/canteen/price", json=price).status_code == 200
            waiting: Future[httpx.Response] = asker.submit(pos.post, "/v1/read-card", json={"timeout": 20})
            assert wait_until(lambda: requests.waiting, 5), "the POS request never reached the daemon"
            taps[name] = terminal.tap(elderly)
            response = waiting.result(timeout=10)
            assert response.status_code == 200
            answers[name] = response.json()

        served("no price", None)
        served("senior meal", {"amount": 1000})
        price_after = pos.get("/v1/canteen/price").json()
        clock.advance(60)
        served("second meal", {"amount": 1000})
        clock.advance(60)
        assert pos.put("/v1/canteen/price", json={"amount": 1000, "expires_in": 0.3}).status_code == 200
        time.sleep(0.5)
        served("price expired", None)
    return PosRun(taps, answers, price_after)


@pytest.fixture(scope="module")
def at_pos(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> PosRun:
    return pos_run(tmp_path_factory.mktemp("canteen-pos"))


def test_the_pos_gets_the_discounted_amount_and_nothing_is_debited(at_pos: PosRun) -> None:
    tap = at_pos.taps["senior meal"]
    record = tap.record
    assert at_pos.answers["senior meal"] == {
        "tap_id": record["tap_id"],
        "result": "accepted",
        "reason": "meal_pay_at_pos",
        "card_token": record["card_token"],
        "region": "510104",
        "amount_due": 800,
        "price": 1000,
        "band": "senior",
        "payment": "pos",
    }
    assert (record["fare"], record["fare_base"], record["concession"], record["tac"]) == (800, 1000, "senior", None)
    assert tap.after == tap.before, "the POS takes the payment: the purse is not touched"
    (signal,) = tap.signals
    assert signal.lines == ("请付 8.00 senior", "")


def test_a_served_price_is_used_up(at_pos: PosRun) -> None:
    assert at_pos.price_after["amount"] is None


def test_the_cap_holds_at_the_pos_too(at_pos: PosRun) -> None:
    answer = at_pos.answers["second meal"]
    assert (answer["reason"], answer["amount_due"], answer["band"]) == ("meal_discount_used", 1000, None)
    assert at_pos.taps["second meal"].signals[0].lines[0] == "请付 10.00 优惠已用"


@pytest.mark.parametrize("name", ["no price", "price expired"])
def test_without_a_price_in_force_the_meal_is_refused(at_pos: PosRun, name: str) -> None:
    assert at_pos.answers[name] == {
        "tap_id": at_pos.taps[name].record["tap_id"],
        "result": "denied",
        "reason": "no_meal_price",
    }
    assert at_pos.taps[name].signals[0].lines[0] == "请先点餐 Order first"
