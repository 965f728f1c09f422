"""A venue gate through pcscd and vpcd: validity, hotlist, region, the band's entry price, one
entry per card per day (kept over a restart), the daily capacity, and reservations by time
slot, reloaded on SIGHUP.

On 2026-05-20 the elderly card's holder is 78 (band "elder", free); the Sichuan card's
holder (born 1990) is in no band and pays the full price.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reader.config import Config
from sscard_sim.card import VirtualCard
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import TAP_DAY, ManualClock, Tap, Terminal, committed
from tests.daemon.kind_bench import hotlist, kind_config, kind_document, token_of, toml_text

BANDS = [{"name": "senior", "min_age": 60, "price": 2000}, {"name": "elder", "min_age": 65, "price": 0}]


def venue(**more: Any) -> dict[str, Any]:
    return {"accepted_regions": ["51", "50"], "price": 4000, "bands": BANDS, **more}


def goto(clock: ManualClock, when: dt.datetime) -> None:
    clock.advance((when - clock()).total_seconds())


def deck() -> dict[str, VirtualCard]:
    names = ("sichuan", "chongqing", "elderly", "expired", "no-transport", "low-balance", "locked-transport")
    return {name: VirtualCard.from_profile(name) for name in names}


# --------------------------------------------------------------------------- entry without reservation


@dataclass
class GateRun:
    config: Config
    taps: dict[str, Tap]
    queued: list[dict[str, Any]]


def gate_run(workdir: Path) -> GateRun:
    config = kind_config("venue", workdir, venue(daily_capacity=3))
    clock = ManualClock(TAP_DAY)
    cards = deck()
    taps: dict[str, Tap] = {}
    with Terminal(config, clock) as terminal:
        hotlist(terminal, token_of(config, cards["locked-transport"]))
        taps["full price"] = terminal.tap(cards["sichuan"])
        taps["free for the elder band"] = terminal.tap(cards["elderly"])
        taps["second entry"] = terminal.tap(cards["sichuan"])
        taps["expired"] = terminal.tap(cards["expired"])
        taps["region"] = terminal.tap(cards["no-transport"])
        taps["hotlisted"] = terminal.tap(cards["locked-transport"])
        taps["third entry"] = terminal.tap(cards["chongqing"])
        taps["capacity reached"] = terminal.tap(cards["low-balance"])
    clock.advance(60)
    with Terminal(config, clock) as terminal:  # the day's entries are kept over a restart
        taps["second entry after a restart"] = terminal.tap(cards["elderly"])
        goto(clock, TAP_DAY + dt.timedelta(days=1))
        taps["next day"] = terminal.tap(cards["sichuan"])
    return GateRun(config, taps, committed(config))


@pytest.fixture(scope="module")
def gate(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> GateRun:
    return gate_run(tmp_path_factory.mktemp("venue-gate"))


EXPECTED_GATE = {
    # tap: (result, reason, entry price, band)
    "full price": ("accepted", "venue_entry", 4000, None),
    "free for the elder band": ("accepted", "venue_entry", 0, "elder"),
    "second entry": ("denied", "already_entered", None, None),
    "expired": ("denied", "expired", None, None),
    "region": ("denied", "region_not_accepted", None, None),
    "hotlisted": ("denied", "hotlisted", None, None),
    "third entry": ("accepted", "venue_entry", 4000, None),
    "capacity reached": ("denied", "venue_full", None, None),
    "second entry after a restart": ("denied", "already_entered", None, None),
    "next day": ("accepted", "venue_entry", 4000, None),
}


@pytest.mark.parametrize("name", EXPECTED_GATE)
def test_gate_decision(gate: GateRun, name: str) -> None:
    result, reason, price, band = EXPECTED_GATE[name]
    tap = gate.taps[name]
    record = tap.record
    assert (record["profile"], record["result"], record["reason"]) == ("venue", result, reason)
    assert (record["fare"], record["concession"]) == (price, band)
    assert record["fare_base"] == (4000 if result == "accepted" else None)
    assert record["tac"] is None and record["balance_after"] is None, "entry is never charged"
    (signal,) = tap.signals
    assert signal.open_gate == (result == "accepted")
    if tap.before is not None:
        assert tap.after == tap.before, "the purse is never touched"


def test_the_display_shows_the_entry_price_of_the_band(gate: GateRun) -> None:
    assert gate.taps["free for the elder band"].signals[0].lines == ("欢迎 Welcome", "免费入场 elder")
    assert gate.taps["full price"].signals[0].lines == ("欢迎 Welcome", "票价 40.00")
    assert gate.taps["capacity reached"].signals[0].lines[0] == "今日已满 Full today"
    assert gate.taps["second entry"].signals[0].lines[0] == "今日已入场 Entered today"


def test_every_tap_is_queued(gate: GateRun) -> None:
    assert [r["tap_id"] for r in gate.queued] == [t.record["tap_id"] for t in gate.taps.values()]


# --------------------------------------------------------------------------- reservations


@dataclass
class ReservedRun:
    taps: dict[str, Tap]


def reserved_run(workdir: Path) -> ReservedRun:
    reservations = workdir / "reservations.json"
    section = venue(reservations=str(reservations), early_minutes=15)
    document = kind_document("venue", workdir, section)
    config_path = workdir / "venue.toml"
    config_path.write_text(toml_text(document), encoding="utf-8")
    config = kind_config("venue", workdir, section)
    cards = deck()
    day = TAP_DAY.date().isoformat()

    def slot(card: str, start: str, end: str) -> dict[str, str]:
        return {"card_token": token_of(config, cards[card]), "start": f"{day}T{start}", "end": f"{day}T{end}"}

    reservations.write_text(
        json.dumps({"reservations": [slot("sichuan", "10:00", "11:00"), slot("elderly", "14:00", "15:00")]})
    )
    clock = ManualClock(TAP_DAY)  # 09:00
    taps: dict[str, Tap] = {}
    with Terminal(config, clock) as terminal:
        taps["too early"] = terminal.tap(cards["sichuan"])
        goto(clock, TAP_DAY.replace(hour=9, minute=45))
        taps["in the early margin"] = terminal.tap(cards["sichuan"])
        taps["another slot"] = terminal.tap(cards["elderly"])
        taps["no reservation"] = terminal.tap(cards["chongqing"])
        reservations.write_text(json.dumps({"reservations": [slot("chongqing", "09:30", "10:30")]}))
        taps["before the reload"] = terminal.tap(cards["chongqing"])
        assert terminal.daemon is not None
        terminal.daemon.config_path = config_path
        terminal.daemon.reload()  # what SIGHUP does
        taps["after the reload"] = terminal.tap(cards["chongqing"])
    return ReservedRun(taps)


@pytest.fixture(scope="module")
def reserved(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> ReservedRun:
    return reserved_run(tmp_path_factory.mktemp("venue-reserved"))


EXPECTED_RESERVED = {
    "too early": ("denied", "reservation_slot_missed", None),
    "in the early margin": ("accepted", "venue_entry_reserved", 4000),
    "another slot": ("denied", "reservation_slot_missed", None),
    "no reservation": ("denied", "not_reserved", None),
    "before the reload": ("denied", "not_reserved", None),
    "after the reload": ("accepted", "venue_entry_reserved", 4000),
}


@pytest.mark.parametrize("name", EXPECTED_RESERVED)
def test_reservation_decision(reserved: ReservedRun, name: str) -> None:
    result, reason, price = EXPECTED_RESERVED[name]
    record = reserved.taps[name].record
    assert (record["result"], record["reason"], record["fare"]) == (result, reason, price)
    assert reserved.taps[name].signals[0].open_gate == (result == "accepted")
