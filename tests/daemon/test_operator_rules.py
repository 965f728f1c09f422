"""The operator's bus rules through pcscd and vpcd: issuer whitelist, interoperability, fare table.

The cards are the bundled profiles: Sichuan's issuer id carries city 5101, Chongqing's 5000,
both T-Union interoperable (0x17 interop_type 0001); a Chongqing card whose 0x17 says 0000 is
written from the bundled profile into the test's own folder.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reader.config import BusSettings, Config
from reader.daemon.record import card_token
from reader.uplink.hotlist import encode_delta, encode_full, token_digest
from reader.uplink.parameters import encode_bundle
from reader.uplink.settings import HotlistSettings, ParameterSettings
from sscard_sim.card import VirtualCard
from sscard_sim.profile import PROFILE_DIR
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import TAP_DAY, ManualClock, Terminal, terminal_config
from tests.support.backoffice import BackOfficeServer
from tests.support.waiting import wait_until

PASSBACK_CLEARED = 61.0


def bus_terminal(workdir: Path, **bus: Any) -> Config:
    """The demo validator with `bus` merged into its [bus] section (validated as a file would be)."""
    config = terminal_config("bus", workdir)
    assert config.bus is not None
    settings = BusSettings.model_validate({**config.bus.model_dump(), **bus})
    return config.model_copy(update={"bus": settings})


def non_interoperable_chongqing(folder: Path) -> VirtualCard:
    """The bundled Chongqing card, its 0x17 saying it is a card of its own city only."""
    text = (PROFILE_DIR / "chongqing.toml").read_text(encoding="utf-8")
    marked = text.replace('[tunion.management]\n', '[tunion.management]\ninterop_type = 0x0000\n', 1)
    assert marked != text
    path = folder / "chongqing-local.toml"
    path.write_text(marked, encoding="utf-8")
    return VirtualCard.from_profile(path)


def test_cards_of_other_cities_are_served_only_when_listed_and_interoperable(
    psam: TearingCard, tmp_path: Path
) -> None:
    whitelist = {"home_cities": ["5101"], "cities": ["5000"]}
    config = bus_terminal(tmp_path / "listed", whitelist=whitelist)
    with Terminal(config, ManualClock(TAP_DAY)) as validator:
        home = validator.tap(VirtualCard.from_profile("sichuan")).record
        listed = validator.tap(VirtualCard.from_profile("chongqing")).record
        local_only = validator.tap(non_interoperable_chongqing(tmp_path)).record
    assert (home["result"], home["reason"]) == ("accepted", "ok")
    assert (listed["result"], listed["reason"]) == ("accepted", "ok")
    assert (local_only["result"], local_only["reason"]) == ("denied", "not_interoperable")
    assert local_only["fare"] is None and local_only["tac"] is None

    unlisted = bus_terminal(tmp_path / "unlisted", whitelist={"home_cities": ["5101"], "cities": ["4401"]})
    with Terminal(unlisted, ManualClock(TAP_DAY)) as validator:
        refused = validator.tap(VirtualCard.from_profile("chongqing"))
    assert (refused.record["result"], refused.record["reason"]) == ("denied", "issuer_not_accepted")
    assert refused.after == refused.before, "a refused card is not charged"


FARES = {
    "time_bands": [
        {"name": "peak", "start": "07:00", "end": "09:00"},
        {"name": "night", "start": "22:00", "end": "05:00"},
    ],
    "by_band": {"peak": 250, "night": 300},
}


@pytest.mark.parametrize(
    ("wall", "band", "fare"),
    [
        pytest.param((6, 59, 59), None, 200, id="a-second-before-the-peak"),
        pytest.param((7, 0, 0), "peak", 250, id="the-peak-starts"),
        pytest.param((8, 59, 59), "peak", 250, id="the-last-second-of-the-peak"),
        pytest.param((9, 0, 0), None, 200, id="the-peak-is-over"),
        pytest.param((22, 0, 0), "night", 300, id="the-night-starts"),
        pytest.param((4, 59, 59), "night", 300, id="after-midnight-still-night"),
        pytest.param((5, 0, 0), None, 200, id="the-night-is-over"),
    ],
)
def test_the_fare_of_each_time_band_at_its_edges(
    psam: TearingCard, tmp_path: Path, wall: tuple[int, int, int], band: str | None, fare: int
) -> None:
    when = TAP_DAY.replace(hour=wall[0], minute=wall[1], second=wall[2])
    config = bus_terminal(tmp_path, fares=FARES, transfer_discount=0)
    card = VirtualCard.from_profile("sichuan")
    with Terminal(config, ManualClock(when)) as validator:
        tap = validator.tap(card)
    record = tap.record
    assert (record["result"], record["time_band"], record["fare"]) == ("accepted", band, fare)
    assert tap.before is not None and tap.after is not None
    assert tap.before.balance - tap.after.balance == fare, "the card paid the band's fare"


def test_a_card_type_concession_from_file_0x17(psam: TearingCard, tmp_path: Path) -> None:
    """The bundled cards say card kind 01 in 0x17; the operator prices that code at half fare."""
    fares = {"card_types": {"student": 0x01}, "by_card_type": {"student": 50}}
    config = bus_terminal(tmp_path, fares=fares, transfer_discount=0)
    with Terminal(config, ManualClock(TAP_DAY + dt.timedelta(hours=3))) as validator:
        record = validator.tap(VirtualCard.from_profile("sichuan")).record
    assert (record["result"], record["card_type"], record["fare"]) == ("accepted", "student", 100)


# RFC 8032 section 7.1, TEST 1: the back office's key on the bench.
BACK_OFFICE = Ed25519PrivateKey.from_private_bytes(
    bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
)
BACK_OFFICE_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def parameters(version: int, base: int) -> dict[str, Any]:
    """A bundle as the back office issues it: a flat base fare for line 812, no whitelist."""
    return {"version": version, "issued": "2026-05-20T06:00:00+08:00", "fares": {"base": base}}


def test_parameters_from_the_back_office_apply_without_a_restart(psam: TearingCard, tmp_path: Path) -> None:
    with BackOfficeServer() as backoffice:
        config = bus_terminal(tmp_path)
        settings = ParameterSettings.model_validate(
            {
                "source": "http",
                "http_url": backoffice.hotlist_url,
                "public_key": BACK_OFFICE_PUBLIC,
                "poll_interval_s": 0.1,
                "path": str(tmp_path / "parameters.json"),
            }
        )
        config = config.model_copy(update={"parameters": settings})
        card = VirtualCard.from_profile("sichuan")
        clock = ManualClock(TAP_DAY + dt.timedelta(hours=3))
        with Terminal(config, clock) as validator:
            store = validator.daemon.services.parameters if validator.daemon and validator.daemon.services else None
            assert store is not None
            before = validator.tap(card).record
            backoffice.set_hotlist(encode_bundle(parameters(7, 350), BACK_OFFICE), '"p-7"')
            assert wait_until(lambda: store.version == 7, 10), "the bundle was never put in force"
            clock.advance(PASSBACK_CLEARED)
            after = validator.tap(card)
            backoffice.set_hotlist(encode_bundle(parameters(8, 50), Ed25519PrivateKey.generate()), '"p-8"')
            assert not wait_until(lambda: store.version != 7, 1.0), "a bundle signed by another key was taken"
            clock.advance(PASSBACK_CLEARED)
            kept = validator.tap(card).record
    assert (before["fare"], before["parameters_version"]) == (200, None)
    assert (after.record["fare"], after.record["parameters_version"]) == (350, 7)
    assert after.before is not None and after.after is not None
    assert after.before.balance - after.after.balance == 350, "the card paid the bundle's fare"
    assert (kept["fare"], kept["parameters_version"]) == (350, 7)


def test_hotlist_updates_that_do_not_check_out_leave_the_list_in_force(psam: TearingCard, tmp_path: Path) -> None:
    """Through the running validator: a delta on another base, or signed by another key, is refused
    whole; the card stays refused until a good delta removes it."""
    card = VirtualCard.from_profile("sichuan")
    with BackOfficeServer() as backoffice:
        config = bus_terminal(tmp_path)
        hotlist = HotlistSettings.model_validate(
            {
                "source": "http",
                "http_url": backoffice.hotlist_url,
                "public_key": BACK_OFFICE_PUBLIC,
                "poll_interval_s": 0.1,
                "path": str(tmp_path / "hotlist.bin"),
            }
        )
        config = config.model_copy(update={"hotlist": hotlist})
        clock = ManualClock(TAP_DAY + dt.timedelta(hours=3))
        with Terminal(config, clock) as validator:
            services = validator.daemon.services if validator.daemon else None
            assert services is not None
            entry = token_digest(bytes.fromhex(card_token(services.token_key, "T99910001")))
            backoffice.set_hotlist(encode_full(1, [entry], BACK_OFFICE), '"h-1"')
            assert wait_until(lambda: services.hotlist.version == "1", 10)
            listed = validator.tap(card).record
            for refused in (
                encode_delta(5, 6, adds=[], removes=[entry], count=0, key=BACK_OFFICE),
                encode_delta(1, 2, adds=[], removes=[entry], count=0, key=Ed25519PrivateKey.generate()),
            ):
                backoffice.set_hotlist(refused, f'"h-{len(refused)}-{refused[-1]}"')
                assert not wait_until(lambda: services.hotlist.version != "1", 1.0), "a bad update was taken"
            clock.advance(PASSBACK_CLEARED)
            still = validator.tap(card).record
            backoffice.set_hotlist(encode_delta(1, 2, adds=[], removes=[entry], count=0, key=BACK_OFFICE), '"h-2"')
            assert wait_until(lambda: services.hotlist.version == "2", 10)
            clock.advance(PASSBACK_CLEARED)
            cleared = validator.tap(card).record
    assert (listed["reason"], listed["hotlist_version"]) == ("hotlisted", "1")
    assert (still["reason"], still["hotlist_version"]) == ("hotlisted", "1")
    assert (cleared["result"], cleared["hotlist_version"]) == ("accepted", "2")
