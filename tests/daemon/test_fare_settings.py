"""`[bus.whitelist]` and `[bus.fares]`: what a good table builds, and what a bad one is told.

Documents go through TOML and JSON as `reader.config.parse_config` takes them (TOML times
become their ISO text, validation is strict), so what passes here passes in the file.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import tomllib
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, ValidationError

from reader.daemon import fare_settings
from reader.daemon.fare_settings import (
    BundleFares,
    FareTableSettings,
    LineCodeSettings,
    TransferSettings,
    WhitelistSettings,
    bus_fare_rules,
)
from reader.daemon.fares import FareCard, FareRide, FareTable, IssuerFacts, check_issuer, fare_for_tap
from reader.daemon.policy import AgeBand

EXAMPLE = """
[bus.whitelist]
home_cities = ["2900"]
cities = ["1000", "5810"]
issuers = ["02205840ffffffff"]

[bus.fares]
time_bands = [
  { name = "peak", start = "07:00", end = "09:00" },
  { name = "evening", start = 17:00:00, end = "19:30" },
  { name = "night", start = "22:00", end = "05:00" },
]
card_types = { student = 2, elder = 3 }

[bus.fares.by_band]
peak = 250
evening = 250
night = 300

[bus.fares.by_card_type]
student = 50
elder = 0

[bus.fares.transfer]
percent = 50
window_minutes = 90
same_line = false

[bus.fares.line_code]
encoding = "bcd"
width = 2
"""


M = TypeVar("M", bound=BaseModel)


def load(model: type[M], text: str, *path: str) -> M:
    """Parse TOML as the configuration loader does: through JSON, strictly."""
    document: Any = tomllib.loads(text)
    for key in path:
        document = document[key]
    return model.model_validate_json(json.dumps(document, default=str), strict=True)


def _bands(*bands: tuple[str, str, str]) -> str:
    inner = ", ".join(f'{{ name = "{n}", start = "{a}", end = "{b}" }}' for n, a, b in bands)
    return f"time_bands = [{inner}]"


def fares(text: str) -> FareTableSettings:
    return load(FareTableSettings, text)


def problem(model: type[BaseModel], text: str) -> str:
    """The one problem a bad table is told about, with where it is."""
    with pytest.raises(ValidationError) as caught:
        load(model, text)
    messages = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in caught.value.errors()]
    assert len(messages) == 1, messages
    return messages[0]


def test_the_example_builds_the_pure_rules() -> None:
    whitelist = load(WhitelistSettings, EXAMPLE, "bus", "whitelist").to_rules()
    assert whitelist.issuers == frozenset({"02205840FFFFFFFF"})  # normalised to upper case
    assert check_issuer(IssuerFacts(bytes.fromhex("02205840FFFFFFFF"), True), whitelist).accepted
    table = load(FareTableSettings, EXAMPLE, "bus", "fares")
    rules = table.to_rules(line="812", fare=200, age_bands=(AgeBand("elder", 70, 0),))
    assert rules.line_code == bytes.fromhex("0812")
    bands = {band.name: (band.start, band.end, band.fare) for band in rules.table.time_bands}
    assert bands == {
        "peak": (dt.time(7), dt.time(9), 250),
        "evening": (dt.time(17), dt.time(19, 30), 250),  # a TOML local time, as its ISO text
        "night": (dt.time(22), dt.time(5), 300),
    }
    assert [(t.name, t.code, t.percent) for t in rules.table.card_types] == [("student", 2, 50), ("elder", 3, 0)]
    transfer = rules.table.transfer
    assert transfer is not None and transfer.percent == 50 and transfer.window == dt.timedelta(minutes=90)
    assert transfer.industries == frozenset({2})
    at_night = dt.datetime(2026, 3, 10, 23, 30)
    earlier = FareRide(at_night - dt.timedelta(minutes=20), bytes.fromhex("0101"), "101", 300, "2900", 2)
    fare = fare_for_tap(FareCard(2, None, (earlier,)), at_night, rules.table, rules.line_code)
    assert (fare.time_band, fare.base, fare.transfer, fare.amount) == ("night", 300, True, 75)  # 300 -> 150 -> 75


def test_the_documented_example_is_a_valid_table() -> None:
    doc = fare_settings.__doc__ or ""
    block = textwrap.dedent("\n".join(line for line in doc.splitlines() if line.startswith("    ")))
    assert "[bus.fares.line_code]" in block
    rules = load(FareTableSettings, block, "bus", "fares").to_rules(line="812", fare=200)
    assert [band.name for band in rules.table.time_bands] == ["peak", "night"]
    assert load(WhitelistSettings, block, "bus", "whitelist").to_rules().home_cities == frozenset({"2900"})


def test_without_a_fare_table_the_flat_fare_means_what_it_meant() -> None:
    bands = (AgeBand("senior", 65, 50),)
    rules = bus_fare_rules(line="812", fare=200, age_bands=bands, transfer_discount=100, transfer_window_minutes=90)
    assert rules.table == FareTable.flat(
        200, bands=bands, transfer_discount=100, transfer_window=dt.timedelta(minutes=90)
    )
    assert rules.line_code == bytes.fromhex("0812") and rules.line_codec.kind == "bcd"
    assert bus_fare_rules(line="812", fare=200).table.transfer is None
    # [bus.fares] without its own transfer keeps [bus] transfer_discount.
    kept = bus_fare_rules(line="812", fare=200, transfer_discount=100, transfer_window_minutes=90, fares=fares(""))
    assert kept.table.transfer is not None and kept.table.transfer.amount == 100


def test_a_transfer_in_both_places_is_refused() -> None:
    table = fares("[transfer]\ndiscount = 50\nwindow_minutes = 60\n")
    with pytest.raises(ValueError, match="not both"):
        bus_fare_rules(line="812", fare=200, transfer_discount=100, transfer_window_minutes=90, fares=table)


def test_the_line_must_fit_the_configured_encoding() -> None:
    with pytest.raises(ValueError, match=r"\[bus\] line: line '12345' has 5 digits; 2 bytes BCD hold 4"):
        bus_fare_rules(line="12345", fare=200, fares=fares(""))
    table = fares('[line_code]\nencoding = "table"\ntable = { "8" = "0800", "10" = ["0A00", "5A00"] }\n')
    assert bus_fare_rules(line="10", fare=200, fares=table).line_code == bytes.fromhex("0A00")
    with pytest.raises(ValueError, match="line '812' is not in the line code table"):
        bus_fare_rules(line="812", fare=200, fares=table)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _bands(("a", "07:00", "09:00"), ("b", "08:30", "10:00")) + "\nby_band = { a = 1, b = 2 }",
            "time bands 'a' (07:00-09:00) and 'b' (08:30-10:00) overlap",
        ),
        (
            _bands(("n", "22:00", "05:00"), ("e", "04:00", "06:00")) + "\nby_band = { n = 1, e = 2 }",
            "time bands 'n' (22:00-05:00) and 'e' (04:00-06:00) overlap",
        ),
        (
            'time_bands = [{ name = "peak", start = "07:00", end = "09:00" }]',
            "time band 'peak' has no fare: add peak = <fen> to [bus.fares.by_band]",
        ),
        ("by_band = { peak = 250 }", "by_band prices 'peak', which is not a time band (none)"),
        (
            "card_types = { student = 2 }\nby_card_type = { student = 50, elder = 0 }",
            "by_card_type prices unknown card type 'elder' (card_types: student)",
        ),
        ("card_types = { student = 2 }", "card type 'student' has no fare: add student = <percent>"),
        ("card_types = { a = 2, b = 2 }\nby_card_type = { a = 1, b = 2 }", "two card types share a code"),
        (
            _bands(("a", "07:00", "09:00"), ("a", "10:00", "11:00")) + "\nby_band = { a = 1 }",
            "two time bands share a name",
        ),
        ('[line_code]\nencoding = "table"\ntable = { "8" = "080000" }', "code 080000 is 3 bytes, the field 2"),
        ('[line_code]\nencoding = "table"\ntable = { "8" = "0800", "9" = "0800" }', "stands for both"),
        ('[line_code]\nencoding = "table"\ntable = { "8" = "08G0" }', "code '08G0' is not hex bytes"),
        ('[line_code]\nencoding = "table"', "encoding 'table' needs a table"),
        ('[line_code]\ntable = { "8" = "0800" }', "encoding 'bcd' takes no table"),
        ("[line_code]\nwidth = 8", "less than or equal to 7"),
        ("[transfer]\nwindow_minutes = 90", "exactly one of them"),
        ("[transfer]\ndiscount = 1\npercent = 1\nwindow_minutes = 90", "exactly one of them"),
        ("[transfer]\npercent = 101\nwindow_minutes = 90", "less than or equal to 100"),
        ("[transfer]\npercent = 10\nwindow_minutes = 0", "greater than 0"),
        ("by_band_typo = {}", "Extra inputs are not permitted"),
        ('by_band = { peak = "250" }', "Input should be a valid integer"),
    ],
)
def test_a_bad_fare_table_is_told_what_is_wrong(text: str, message: str) -> None:
    assert message in problem(FareTableSettings, text)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("25:00", "09:00", "'25:00' is not a time of day"),
        ("7:00", "09:00", "'7:00' is not a local time 'HH:MM' or 'HH:MM:SS'"),
        ("24:00", "09:00", "'24:00' is not a time of day (00:00 to 23:59:59)"),
        ("07:60", "09:00", "is not a time of day"),
        ("07:00", "07:00", "starts where it ends"),
        ("00:00", "24:00", "starts where it ends"),
    ],
)
def test_a_bad_time_band_is_told_what_is_wrong(start: str, end: str, message: str) -> None:
    text = f'time_bands = [{{ name = "a", start = "{start}", end = "{end}" }}]\nby_band = {{ a = 1 }}'
    assert message in problem(FareTableSettings, text)


def test_a_band_may_end_at_24_00() -> None:
    table = fares('time_bands = [{ name = "late", start = "20:00", end = "24:00" }]\nby_band = { late = 220 }')
    (band,) = table.table(200, (), None).time_bands
    assert band.contains(dt.time(23, 59, 59, 999_999)) and not band.contains(dt.time(0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('home_cities = ["2900"]', "a whitelist lists cities or issuers"),
        ('home_cities = ["2900"]\ncities = []\nissuers = []', "a whitelist lists cities or issuers"),
        ('home_cities = []\ncities = ["1000"]', "at least 1 item"),
        ('cities = ["1000"]', "home_cities: Field required"),
        ('home_cities = ["290"]\ncities = ["1000"]', "should match pattern"),
        ('home_cities = ["2900"]\nissuers = ["02002900FFFFFFF"]', "should match pattern"),
        ('home_cities = ["2900"]\ncities = ["1000"]\nhome = "2900"', "Extra inputs are not permitted"),
    ],
)
def test_a_bad_whitelist_is_told_what_is_wrong(text: str, message: str) -> None:
    assert message in problem(WhitelistSettings, text)


def test_transfer_settings_build_the_rule() -> None:
    rule = load(TransferSettings, 'discount = 100\nwindow_minutes = 45\ncities = ["2900"]\nindustries = []').to_rules()
    assert (rule.amount, rule.percent, rule.window, rule.cities, rule.industries) == (
        100,
        0,
        dt.timedelta(minutes=45),
        frozenset({"2900"}),
        frozenset(),
    )


def test_line_code_settings_default_to_two_bytes_bcd() -> None:
    codec = LineCodeSettings().codec()
    assert (codec.kind, codec.width) == ("bcd", 2)


def test_a_bundle_fare_table_carries_its_base_and_age_bands() -> None:
    bundle = load(
        BundleFares,
        'base = 200\nage_bands = [{ name = "elder", min_age = 70, percent = 0 }]\n'
        'time_bands = [{ name = "peak", start = "07:00", end = "09:00" }]\nby_band = { peak = 250 }',
    )
    rules = bundle.rules("812")
    assert rules.table.base == 200 and rules.table.age_bands == (AgeBand("elder", 70, 0),)
    assert "base: Field required" in problem(BundleFares, "by_band = {}")
    assert "each min_age may appear once" in problem(
        BundleFares,
        "base = 200\nage_bands = ["
        '{ name = "a", min_age = 70, percent = 0 }, { name = "b", min_age = 70, percent = 5 }]',
    )
