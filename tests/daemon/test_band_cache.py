"""A repeat rider's age band is kept until the day it could change; the SSSE is read again then.

Pure checks of the cache and of the day a band ends, then the bench: a card whose holder
turns 65 on the day after the first tap, tapped before and after that birthday.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from reader.daemon.band_cache import BandCache, KnownBand
from reader.daemon.fares import AgeBand, band_until
from sscard_sim.card import VirtualCard
from sscard_sim.profile import PROFILE_DIR
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import TAP_DAY, ManualClock, Terminal, TracedCard, terminal_config

SENIOR, ELDER = AgeBand("senior", 65, 50), AgeBand("elder", 70, 0)
BANDS = (SENIOR, ELDER)
INS_INTERNAL_AUTHENTICATE = 0x88
DAY = dt.timedelta(days=1)


def test_a_band_ends_on_the_birthday_that_enters_the_next() -> None:
    assert band_until(dt.date(1961, 5, 21), dt.date(2026, 5, 20), BANDS) == dt.date(2026, 5, 21)
    assert band_until(dt.date(1961, 5, 21), dt.date(2026, 5, 21), BANDS) == dt.date(2031, 5, 21)
    assert band_until(dt.date(1948, 3, 8), dt.date(2026, 5, 20), BANDS) is None, "no band lies ahead"
    assert band_until(dt.date(1960, 2, 29), dt.date(2024, 6, 1), BANDS) == dt.date(2025, 3, 1)
    assert band_until(dt.date(1959, 2, 28), dt.date(2024, 2, 27), BANDS) == dt.date(2024, 2, 28)


def test_the_cache_keeps_a_band_until_its_day_and_forgets_on_new_bands() -> None:
    cache = BandCache(capacity=2)
    until = dt.date(2026, 5, 21)
    cache.put("a", KnownBand(None, until), BANDS)
    assert cache.get("a", until - DAY, BANDS) == KnownBand(None, until)
    assert cache.get("a", until, BANDS) is None, "on the birthday the band may have changed"
    cache.put("a", KnownBand(SENIOR, None), BANDS)
    assert cache.get("a", until, (SENIOR,)) is None, "other bands: nothing kept holds"
    cache.put("a", KnownBand(SENIOR, None), BANDS)
    cache.put("b", KnownBand(None, None), BANDS)
    assert cache.get("a", until, BANDS) is not None  # "a" is now the most recently used
    cache.put("c", KnownBand(None, None), BANDS)
    assert len(cache) == 2 and cache.get("b", until, BANDS) is None, "the least recently used goes first"


def test_a_cache_holds_at_least_one_card() -> None:
    one = BandCache(capacity=1)
    one.put("a", KnownBand(None, None), BANDS)
    assert one.get("a", dt.date(2026, 5, 20), BANDS) is not None
    with pytest.raises(ValueError, match="a band cache holds at least one card"):
        BandCache(capacity=0)


def turning_65_tomorrow(folder: Path) -> VirtualCard:
    """The bundled Sichuan card, its holder born on 21 May 1961 (65 on the day after TAP_DAY)."""
    text = (PROFILE_DIR / "sichuan.toml").read_text(encoding="utf-8")
    born = text.replace("birth_date = 1990-01-01", "birth_date = 1961-05-21", 1)
    assert born != text
    path = folder / "turning-65.toml"
    path.write_text(born, encoding="utf-8")
    return VirtualCard.from_profile(path)


def test_a_repeat_rider_is_priced_without_authentication_until_the_band_could_change(
    psam: TearingCard, tmp_path: Path
) -> None:
    card = TracedCard(turning_65_tomorrow(tmp_path))
    clock = ManualClock(TAP_DAY)
    taps = []
    with Terminal(terminal_config("bus", tmp_path / "state"), clock) as validator:
        for advance in (0, 3600, DAY.total_seconds(), 3600):
            clock.advance(advance)
            card.clear()
            tap = validator.tap(card)
            authenticated = any(apdu[1] == INS_INTERNAL_AUTHENTICATE for apdu in card.commands)
            taps.append((tap.record["fare"], tap.record["concession"], authenticated, len(card.commands)))
    first, again, birthday, after = taps
    assert first[:3] == (200, None, True), "the first tap reads the birth date"
    assert again[:3] == (200, None, False), "the same day: the band is kept"
    assert birthday[:3] == (100, "senior", True), "on the 65th birthday the band is read again"
    assert after[:3] == (100, "senior", False)
    assert again[3] <= first[3] - 6, "the authentication and EF06 are not sent"


def test_a_free_rider_is_authenticated_on_every_tap(psam: TearingCard, tmp_path: Path) -> None:
    """A free ride sends no purchase, whose MACs would prove the card: the SSSE must."""
    card = TracedCard(VirtualCard.from_profile("elderly"))
    clock = ManualClock(TAP_DAY)
    with Terminal(terminal_config("bus", tmp_path), clock) as validator:
        for _ in range(2):
            card.clear()
            tap = validator.tap(card)
            assert (tap.record["fare"], tap.record["concession"]) == (0, "elder")
            assert any(apdu[1] == INS_INTERNAL_AUTHENTICATE for apdu in card.commands)
            clock.advance(3600)
