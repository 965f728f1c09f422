"""Third-generation cards on terminals whose PSAM cannot authenticate the SSSE.

The PSAM authentication commands are this project's convention, so a PSAM of another scheme
answers them 6D00 (the bundled `foreign-psam`). That is the terminal's shortcoming, not the
card's: every kind refuses or carries on with its own reason, `psam_cannot_authenticate`, and
records which card it was (token and region are read before authentication). A bus configured
with `on_birth_date_unreadable = "full_fare"` charges such a card the full fare, without the age
band it cannot read; with "refuse" it turns it away. A clone met by the genuine PSAM is still
`card_not_genuine`. Everything runs on the real daemon over pcscd and vpcd.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reader.config import Config, read_secret
from sscard_sim.psam import VirtualPsam
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import TAP_DAY, LogBuffer, ManualClock, Tap, Terminal, terminal_config
from tests.daemon.expected import region, token
from tests.daemon.scenarios import cards

REASON = "psam_cannot_authenticate"


@dataclass
class Runs:
    """The taps of each terminal, by card profile, and the deployment's card-token key."""

    token_key: bytes
    bus_refuse: dict[str, Tap]
    bus_full_fare: dict[str, Tap]
    library: dict[str, Tap]
    pharmacy: dict[str, Tap]
    genuine_psam_library: dict[str, Tap]
    genuine_psam_bus: dict[str, Tap]
    foreign_psam_was_asked: bool


def _bus(workdir: Path, key: Path, unreadable: str) -> Config:
    config = terminal_config("bus", workdir, token_key=key)
    assert config.bus is not None and config.bus.bands, "the bus example must have age bands"
    return config.model_copy(update={"bus": config.bus.model_copy(update={"on_birth_date_unreadable": unreadable})})


def _holder(kind: str, workdir: Path, key: Path) -> Config:
    return terminal_config(kind, workdir, token_key=key, api_listen=f"unix:{workdir}/api.sock")


def _taps(config: Config, names: tuple[str, ...]) -> dict[str, Tap]:
    deck = cards()
    with Terminal(config, ManualClock(TAP_DAY)) as terminal:
        return {name: terminal.tap(deck[name]) for name in names}


class CountingPsam:
    """A PSAM that remembers whether any SSSE authentication command reached it."""

    def __init__(self, psam: VirtualPsam) -> None:
        self.psam = psam
        self.ssse_commands = 0

    def power_on(self) -> bytes:
        return self.psam.power_on()

    def power_off(self) -> None:
        self.psam.power_off()

    def atr(self) -> bytes:
        return self.psam.atr()

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[:2] in (b"\x80\xf0", b"\x80\xf2"):
            self.ssse_commands += 1
        return self.psam.transmit(apdu)


@pytest.fixture(scope="module")
def runs(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """The SAM slot's PSAM is swapped for the foreign one for these terminals, then given back."""
    workdir = tmp_path_factory.mktemp("psam-cannot-authenticate")
    key = workdir / "token.key"
    genuine = psam.card
    foreign = CountingPsam(VirtualPsam.from_profile("foreign-psam"))
    foreign.power_on()
    psam.card = foreign
    try:
        bus_refuse = _taps(_bus(workdir / "bus-refuse", key, "refuse"), ("sichuan", "elderly"))
        bus_full_fare = _taps(_bus(workdir / "bus-full-fare", key, "full_fare"), ("sichuan", "elderly"))
        library = _taps(_holder("library", workdir / "library", key), ("sichuan", "second-generation", "cloned"))
        pharmacy = _taps(_holder("pharmacy", workdir / "pharmacy", key), ("sichuan", "chongqing"))
    finally:
        psam.card = genuine
    genuine_library = _taps(_holder("library", workdir / "library-genuine", key), ("cloned",))
    genuine_bus = _taps(_bus(workdir / "bus-genuine", key, "full_fare"), ("cloned",))
    return Runs(
        token_key=read_secret(f"file:{key}"),
        bus_refuse=bus_refuse,
        bus_full_fare=bus_full_fare,
        library=library,
        pharmacy=pharmacy,
        genuine_psam_library=genuine_library,
        genuine_psam_bus=genuine_bus,
        foreign_psam_was_asked=foreign.ssse_commands > 0,
    )


def _identified(record: dict[str, Any], key: bytes, name: str) -> None:
    assert record["card_token"] == token(key, name)
    assert record["region"] == region(name)


def _tap_events(logs: LogBuffer, record: dict[str, Any]) -> list[dict[str, Any]]:
    return [event for event in logs.events() if event.get("tap_id") == record["tap_id"]]


def test_the_foreign_psam_was_the_one_asked(runs: Runs) -> None:
    assert runs.foreign_psam_was_asked


@pytest.mark.parametrize("name", ["sichuan", "elderly"])
def test_bus_set_to_refuse_turns_the_card_away_naming_it(runs: Runs, name: str) -> None:
    tap = runs.bus_refuse[name]
    record = tap.record
    assert (record["result"], record["reason"]) == ("denied", REASON)
    _identified(record, runs.token_key, name)
    assert record["fare"] is None and record["tac"] is None
    assert tap.before is not None and tap.after is not None
    assert tap.after.balance == tap.before.balance
    (signal,) = tap.signals
    assert not signal.open_gate


@pytest.mark.parametrize("name", ["sichuan", "elderly"])
def test_bus_set_to_full_fare_charges_the_full_fare_without_a_band(runs: Runs, name: str) -> None:
    """The elderly holder (78) would ride free with the band the PSAM cannot read."""
    tap = runs.bus_full_fare[name]
    record = tap.record
    assert (record["result"], record["reason"]) == ("accepted", "ok")
    assert (record["fare"], record["fare_base"], record["concession"]) == (200, 200, None)
    _identified(record, runs.token_key, name)
    assert record["mac2_verified"] is True
    assert tap.before is not None and tap.after is not None
    assert tap.before.balance - tap.after.balance == 200
    assert [debit.amount for debit in tap.after.debits_since(tap.before)] == [200]


def test_bus_full_fare_logs_one_warning_naming_the_command_and_status(runs: Runs, tap_logs: LogBuffer) -> None:
    events = _tap_events(tap_logs, runs.bus_full_fare["elderly"].record)
    warnings = [event for event in events if event.get("level") == "warning"]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning["event"] == "tap_psam_cannot_authenticate"
    assert (warning["command"], warning["sw"], warning["on_birth_date_unreadable"]) == (
        "PSAM VERIFY CARD",
        "6D00",
        "full_fare",
    )


@pytest.mark.parametrize("name", ["sichuan", "cloned"])
def test_library_refuses_a_card_it_cannot_authenticate_naming_it(runs: Runs, name: str) -> None:
    """Without the means to authenticate, even a clone is not called one: the terminal cannot tell."""
    tap = runs.library[name]
    record = tap.record
    assert (record["result"], record["reason"]) == ("denied", REASON)
    _identified(record, runs.token_key, name)
    (signal,) = tap.signals
    assert not signal.open_gate


def test_library_still_serves_a_second_generation_card(runs: Runs) -> None:
    record = runs.library["second-generation"].record
    assert (record["result"], record["reason"]) == ("accepted", "ok")


@pytest.mark.parametrize("name", ["sichuan", "chongqing"])
def test_pharmacy_refuses_a_card_it_cannot_authenticate_naming_it(runs: Runs, name: str) -> None:
    record = runs.pharmacy[name].record
    assert (record["result"], record["reason"], record["profile"]) == ("denied", REASON, "pharmacy")
    _identified(record, runs.token_key, name)


@pytest.mark.parametrize("kind", ["library", "pharmacy", "bus_refuse"])
def test_each_refusal_logs_one_warning_naming_the_command_and_status(
    runs: Runs, tap_logs: LogBuffer, kind: str
) -> None:
    taps: dict[str, Tap] = getattr(runs, kind)
    events = _tap_events(tap_logs, taps["sichuan"].record)
    warnings = [event for event in events if event.get("level") == "warning"]
    assert [(w["event"], w["command"], w["sw"]) for w in warnings] == [
        ("tap_psam_cannot_authenticate", "PSAM VERIFY CARD", "6D00")
    ]


def test_a_clone_met_by_the_genuine_psam_is_still_not_genuine(runs: Runs) -> None:
    for taps in (runs.genuine_psam_library, runs.genuine_psam_bus):
        record = taps["cloned"].record
        assert (record["result"], record["reason"]) == ("denied", "card_not_genuine")
        assert (record["card_token"], record["region"]) == (None, None)
