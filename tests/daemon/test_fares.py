"""The issuer whitelist and the fare table at every boundary, without readers.

Byte-level facts (city codes, the interoperability flag, line codes in 0x1E) are pinned by
vectors from public sources, named where used:

- FLP: tkerby/flipperzero-firmware-wPlugins, applications/external/t_union_master/
  - docs/card_data_format.md, the worked 0x1E record (in tests/protocols/public_vectors.py);
  - resources/stations/1000/L-8.txt and M-prefix-map.txt (commit 58ab6a4425ff17bc88a50c8571d569d48fbc1345):
    Beijing's line codes, `08: 8`, `0A: 10`, `5A: 10`, and station `080019: 奥林匹克公园`;
  - resources/stations/2900/L-10.txt and L-2.txt (commits 47ea50b807e575ff465cd48fd3b3203e18443140,
    aa4abf8c44c326c321f0c005236bf65f7e3c4290): Shanghai's station ids `00100041: 虹桥火车站`
    (line 10) and `00020035: 虹桥火车站` (line 2), the line in 2 bytes BCD;
  - resources/city_code.txt (47ea50b8…): `2900: 上海市`, `5810: 广州市` (GB/T 13497).
- SHM: fengyuruhui98/File, sh_transport_operation.h/.c (1563316e…): `SH_CODE_ORGANIZATION
  "\\x02\\x00\\x29\\x00\\xff\\xff\\xff\\xff"`, `SH_CODE_CITY "\\x29\\x00"`, and the gate's refusal of a
  card whose 0x17 bytes 8-9 are 00 00 ("判断是否为互联互通卡").
- TUR: HaoTian22/TU-Reader tests, a real Lingnan Pass (Guangzhou) card's 0x15 and a 0x17.

No public vector was found for a line code wider than 2 bytes; the 4-byte BCD case below is
checked against the BCD rule itself (digits right-aligned), not against a source.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from protocols.tunion import MANAGEMENT_INFO_LAYOUT, PROCESS_RECORD_LAYOUT, PUBLIC_INFO_LAYOUT
from protocols.tunion_process import build_process_record
from reader.daemon import policy
from reader.daemon.fares import (
    CardType,
    FareCard,
    FareReason,
    FareRide,
    FareTable,
    IssuerFacts,
    IssuerRules,
    LineCodec,
    LineCodeError,
    TimeBand,
    TransferRule,
    bands_overlap,
    check_issuer,
    city_of,
    fare_for_tap,
    ride_from_record,
)
from reader.daemon.policy import AgeBand
from tests.protocols.public_vectors import VECTORS


def _vector(structure: str, note: str) -> bytes:
    return next(v.raw for v in VECTORS if v.structure == structure and v.note == note)


FLP_1E = next(v.raw for v in VECTORS if v.structure == "0x1E" and v.source.startswith("FLP"))
YCT_15 = _vector("0x15", "YctRealCardTest epInfo")
TUR_17 = _vector("0x17", "tuManagementFileIsNotConfused management")

SHANGHAI_ISSUER = bytes.fromhex("02002900FFFFFFFF")  # SHM SH_CODE_ORGANIZATION
BEIJING = LineCodec.table({"8": [bytes.fromhex("0800")], "10": [bytes.fromhex("0A00"), bytes.fromhex("5A00")]})
SHANGHAI = LineCodec.bcd(2)


def t(hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> dt.time:
    return dt.time(hour, minute, second, micro)


def at(hour: int, minute: int = 0, second: int = 0, micro: int = 0, day: int = 10) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, second, micro)


# --------------------------------------------------------------------------- issuers


def test_the_city_is_bytes_2_and_3_of_the_issuer_id() -> None:
    assert city_of(SHANGHAI_ISSUER) == "2900"  # SHM: SH_CODE_CITY 29 00 inside SH_CODE_ORGANIZATION
    public = PUBLIC_INFO_LAYOUT.parse(YCT_15)
    assert IssuerFacts.from_files(public, None).city == "5810"  # a Guangzhou card; FLP city_code.txt 5810
    with pytest.raises(ValueError, match="8 bytes"):
        city_of(bytes(4))


def test_the_interoperability_flag_comes_from_0x17_bytes_8_and_9() -> None:
    public = PUBLIC_INFO_LAYOUT.parse(YCT_15)
    interop = MANAGEMENT_INFO_LAYOUT.parse(TUR_17)  # bytes 8-9 = 00 01
    assert IssuerFacts.from_files(public, interop).interoperable is True
    local_only = MANAGEMENT_INFO_LAYOUT.parse(TUR_17[:8] + b"\x00\x00" + TUR_17[10:])  # what SHM refuses
    assert IssuerFacts.from_files(public, local_only).interoperable is False
    assert IssuerFacts.from_files(public, None).interoperable is None


def _issuer(city: str, interoperable: bool | None, tail: str = "FFFFFFFF", head: str = "0200") -> IssuerFacts:
    return IssuerFacts(bytes.fromhex(head + city + tail), interoperable)


WHITELIST = IssuerRules(
    home_cities=frozenset({"2900"}),
    cities=frozenset({"1000"}),
    issuers=frozenset({"02205810FFFFFFFF"}),
)


@pytest.mark.parametrize("interoperable", [True, False, None])
def test_a_home_city_card_is_served_whatever_its_flag(interoperable: bool | None) -> None:
    check = check_issuer(_issuer("2900", interoperable), WHITELIST)
    assert check.accepted and check.home and check.reason is None and check.city == "2900"


@pytest.mark.parametrize(
    ("card", "reason"),
    [
        (_issuer("1000", True), None),  # listed city, interoperable
        (_issuer("1000", False), FareReason.NOT_INTEROPERABLE),  # listed, but a local-only card
        (_issuer("1000", None), FareReason.NOT_INTEROPERABLE),  # listed, 0x17 not read: not proven
        (_issuer("5810", True, head="0220"), None),  # listed by whole issuer id
        (_issuer("5810", True, head="0221"), FareReason.ISSUER_NOT_ACCEPTED),  # same city, another issuer
        (_issuer("5810", False, head="0220"), FareReason.NOT_INTEROPERABLE),
        (_issuer("6510", True), FareReason.ISSUER_NOT_ACCEPTED),  # not listed at all
        (_issuer("6510", False), FareReason.ISSUER_NOT_ACCEPTED),  # the whitelist answers first
    ],
)
def test_a_card_of_another_city_needs_the_whitelist_and_the_flag(card: IssuerFacts, reason: FareReason | None) -> None:
    check = check_issuer(card, WHITELIST)
    assert check.reason is reason and check.accepted is (reason is None) and not check.home


def test_without_a_whitelist_only_the_flag_decides() -> None:
    rules = IssuerRules(home_cities=frozenset({"2900"}))
    assert not rules.whitelist_in_force
    assert check_issuer(_issuer("6510", True), rules).accepted
    assert check_issuer(_issuer("6510", False), rules).reason is FareReason.NOT_INTEROPERABLE
    assert check_issuer(_issuer("2900", False), rules).accepted


def test_a_thousand_issuers_are_looked_up_as_a_set() -> None:
    issuers = frozenset(f"02{n:06X}FFFFFFFF" for n in range(1000))
    rules = IssuerRules(home_cities=frozenset({"2900"}), issuers=issuers)
    listed = IssuerFacts(bytes.fromhex("020003E7FFFFFFFF"), True)  # n = 999
    unlisted = IssuerFacts(bytes.fromhex("020003E8FFFFFFFF"), True)  # n = 1000
    assert check_issuer(listed, rules).accepted
    assert check_issuer(unlisted, rules).reason is FareReason.ISSUER_NOT_ACCEPTED
    assert {r.value for r in FareReason} == {"issuer_not_accepted", "not_interoperable"}


# --------------------------------------------------------------------------- line codes


def test_the_public_0x1e_record_reads_back_as_beijing_line_8() -> None:
    record = PROCESS_RECORD_LAYOUT.parse(FLP_1E)
    ride = ride_from_record(record, BEIJING)
    # FLP: city 1000 (Beijing), line-station 08 00 19 = L-8.txt "080019: 奥林匹克公园", M-prefix-map "08: 8".
    assert ride.line == "8" and ride.line_code == bytes.fromhex("0800")
    assert ride.city == "1000" and ride.amount == 500 and ride.industry == 1
    assert ride.when == dt.datetime(2024, 12, 29, 14, 17, 40)


def test_a_table_line_has_one_code_written_and_every_code_read() -> None:
    # M-prefix-map: "0A: 10" and "5A: 10", line_stations.yml: 10号线 id ["10000A00", "10005A00"].
    assert BEIJING.encode("10") == bytes.fromhex("0A00")
    assert BEIJING.decode(bytes.fromhex("0A0001000000FF")) == "10"
    assert BEIJING.decode(bytes.fromhex("5A0017000000FF")) == "10"
    assert BEIJING.decode(bytes.fromhex("0B0015000000FF")) is None  # line 11: not in this table
    with pytest.raises(LineCodeError, match="not in the line code table"):
        BEIJING.encode("11")


def test_shanghai_writes_its_lines_in_two_bytes_bcd() -> None:
    # FLP 2900/L-10.txt "00100041: 虹桥火车站", L-2.txt "00020035: 虹桥火车站": line, then station.
    assert SHANGHAI.encode("10") == bytes.fromhex("0010")
    assert SHANGHAI.encode("2") == bytes.fromhex("0002")
    assert SHANGHAI.decode(bytes.fromhex("00100041000000")) == "10"
    assert SHANGHAI.decode(bytes.fromhex("00020035000000")) == "2"
    assert SHANGHAI.decode(bytes.fromhex("0000FFFF000000")) == "0"


@pytest.mark.parametrize("line", ["0", "7", "812", "9999"])
def test_the_default_codec_reads_back_what_the_terminal_writes(line: str) -> None:
    """`[bus] line` without [bus.fares]: the 0x1E writer's 2-byte BCD line is the codec's."""
    record = build_process_record(
        transaction_type=0x06,
        terminal_number=bytes.fromhex("000000000001"),
        industry=0x02,
        line=line,
        station="1",
        operator_code="2",
        amount=200,
        balance_after=1000,
        time=dt.datetime(2026, 3, 10, 12, 0),
        city_code=bytes.fromhex("2900"),
        acquirer=bytes(8),
    )
    ride = ride_from_record(PROCESS_RECORD_LAYOUT.parse(record), LineCodec.bcd())
    assert ride.line_code == LineCodec.bcd().encode(line) and ride.line == str(int(line))


def test_bcd_codes_refuse_what_does_not_fit() -> None:
    assert LineCodec.bcd(4).encode("101") == bytes.fromhex("00000101")  # no public source: the BCD rule
    assert LineCodec.bcd(1).encode("99") == b"\x99"
    with pytest.raises(LineCodeError, match="3 digits"):
        LineCodec.bcd(1).encode("101")
    with pytest.raises(LineCodeError, match="not decimal"):
        SHANGHAI.encode("10A")
    with pytest.raises(LineCodeError, match="not decimal"):
        SHANGHAI.encode("١٠")  # Arabic-Indic digits are digits to str.isdigit, not to BCD
    assert SHANGHAI.decode(bytes.fromhex("0A10")) is None  # not BCD: another operator's code
    assert SHANGHAI.decode(b"\x01") is None  # a field shorter than the code
    with pytest.raises(LineCodeError, match="1 to 7"):
        LineCodec.bcd(8)
    with pytest.raises(LineCodeError, match="1 to 7"):
        LineCodec.bcd(0)


def test_a_table_refuses_codes_that_do_not_fit_or_collide() -> None:
    with pytest.raises(LineCodeError, match="3 bytes, the field 2"):
        LineCodec.table({"8": [bytes.fromhex("080000")]})
    with pytest.raises(LineCodeError, match="both"):
        LineCodec.table({"8": [bytes.fromhex("0800")], "9": [bytes.fromhex("0800")]})
    with pytest.raises(LineCodeError, match="no code"):
        LineCodec.table({"8": []})
    with pytest.raises(LineCodeError, match="no table"):
        LineCodec("bcd", 2, (("8", (b"\x08\x00",)),))


# --------------------------------------------------------------------------- time bands


PEAK = TimeBand("peak", t(7), t(9), 250)
NIGHT = TimeBand("night", t(22), t(5), 300)
LATE = TimeBand("late", t(20), t(0), 220)  # ends at midnight


@pytest.mark.parametrize(
    ("band", "moment", "inside"),
    [
        (PEAK, t(6, 59, 59, 999_999), False),
        (PEAK, t(7), True),
        (PEAK, t(8, 59, 59, 999_999), True),
        (PEAK, t(9), False),
        (NIGHT, t(21, 59, 59, 999_999), False),
        (NIGHT, t(22), True),
        (NIGHT, t(23, 59, 59, 999_999), True),
        (NIGHT, t(0), True),
        (NIGHT, t(4, 59, 59, 999_999), True),
        (NIGHT, t(5), False),
        (NIGHT, t(12), False),
        (LATE, t(20), True),
        (LATE, t(23, 59, 59, 999_999), True),
        (LATE, t(0), False),
        (LATE, t(19, 59, 59, 999_999), False),
    ],
)
def test_time_bands_are_half_open_and_may_cross_midnight(band: TimeBand, moment: dt.time, inside: bool) -> None:
    assert band.contains(moment) is inside


def test_a_band_that_starts_where_it_ends_is_refused() -> None:
    with pytest.raises(ValueError, match="no time, or all"):
        TimeBand("all", t(5), t(5), 100)
    with pytest.raises(ValueError, match="UTC offset"):
        TimeBand("tz", t(5).replace(tzinfo=dt.UTC), t(6), 100)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (PEAK, TimeBand("b", t(9), t(11), 1), False),  # adjacent: 09:00 belongs to the second only
        (PEAK, TimeBand("b", t(8, 59), t(11), 1), True),
        (PEAK, TimeBand("b", t(5), t(7), 1), False),
        (PEAK, TimeBand("b", t(5), t(7, 0, 1), 1), True),
        (NIGHT, TimeBand("b", t(5), t(7), 1), False),
        (NIGHT, TimeBand("b", t(4, 59), t(7), 1), True),
        (NIGHT, TimeBand("b", t(21), t(22), 1), False),
        (NIGHT, TimeBand("b", t(21), t(22, 0, 1), 1), True),
        (NIGHT, TimeBand("b", t(23), t(1), 1), True),  # two bands across midnight always share it
        (LATE, TimeBand("b", t(0), t(5), 1), False),  # 20:00-24:00 and 00:00-05:00
        (LATE, NIGHT, True),
        (PEAK, PEAK, True),
    ],
)
def test_band_overlap(a: TimeBand, b: TimeBand, overlap: bool) -> None:
    assert bands_overlap(a, b) is overlap and bands_overlap(b, a) is overlap


def test_a_table_refuses_overlapping_bands_and_shared_card_type_codes() -> None:
    with pytest.raises(ValueError, match="overlap"):
        FareTable(200, time_bands=(NIGHT, LATE))
    with pytest.raises(ValueError, match="share a code"):
        FareTable(200, card_types=(CardType("a", 2, 50), CardType("b", 2, 0)))


# --------------------------------------------------------------------------- the fare

LINE = bytes.fromhex("0812")
OTHER_LINE = bytes.fromhex("0101")
SENIOR, ELDER = AgeBand("senior", 65, 50), AgeBand("elder", 70, 0)
STUDENT, VETERAN = CardType("student", 2, 50), CardType("veteran", 5, 60)
TABLE = FareTable(
    base=200,
    time_bands=(PEAK, NIGHT),
    card_types=(STUDENT, VETERAN),
    age_bands=(SENIOR, ELDER),
)
NOBODY = FareCard(card_type=None, birth_date=None)


def ride(
    when: dt.datetime | None, line: bytes = OTHER_LINE, amount: int = 200, city: str = "2900", industry: int = 2
) -> FareRide:
    return FareRide(when, line, None, amount, city, industry)


@pytest.mark.parametrize(
    ("now", "band", "base"),
    [
        (at(6, 59, 59, 999_999), None, 200),
        (at(7), "peak", 250),
        (at(8, 59, 59, 999_999), "peak", 250),
        (at(9), None, 200),
        (at(21, 59, 59, 999_999), None, 200),
        (at(22), "night", 300),
        (at(0), "night", 300),
        (at(4, 59, 59, 999_999), "night", 300),
        (at(5), None, 200),
    ],
)
def test_the_base_fare_is_the_time_band_s(now: dt.datetime, band: str | None, base: int) -> None:
    fare = fare_for_tap(NOBODY, now, TABLE, LINE)
    assert (fare.time_band, fare.base, fare.amount, fare.percent, fare.concession) == (band, base, base, 100, None)
    assert isinstance(fare, policy.Fare) and not fare.transfer and fare.transfer_discount == 0


def test_an_aware_time_is_taken_as_its_own_wall_time() -> None:
    aware = dt.datetime(2026, 3, 10, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    assert fare_for_tap(NOBODY, aware, TABLE, LINE).time_band == "peak"


def test_a_card_type_pays_its_percentage_rounded_down() -> None:
    odd = FareTable(base=155, card_types=(STUDENT,))
    fare = fare_for_tap(FareCard(2, None), at(12), odd, LINE)
    assert (fare.amount, fare.card_type, fare.concession, fare.percent) == (77, "student", "card_type", 50)
    unknown = fare_for_tap(FareCard(9, None), at(12), odd, LINE)
    assert (unknown.amount, unknown.card_type, unknown.concession) == (155, None, None)


@pytest.mark.parametrize(
    ("card_type", "age_years", "amount", "concession", "band"),
    [
        (None, 64, 200, None, None),
        (None, 65, 100, "age_band", "senior"),
        (None, 70, 0, "age_band", "elder"),
        (5, 64, 120, "card_type", None),  # veteran 60 %
        (5, 65, 100, "age_band", "senior"),  # 50 % < 60 %: the lower applies
        (2, 65, 100, "card_type", None),  # 50 % each: the tie goes to the card type
        (2, 70, 0, "age_band", "elder"),
    ],
)
def test_concessions_do_not_stack_the_lower_applies(
    card_type: int | None, age_years: int, amount: int, concession: str | None, band: str | None
) -> None:
    now = at(12)
    birth = dt.date(now.year - age_years, now.month, now.day)  # the birthday itself counts
    fare = fare_for_tap(FareCard(card_type, birth), now, TABLE, LINE)
    assert (fare.amount, fare.concession, fare.band) == (amount, concession, band)


def test_the_age_band_starts_on_the_birthday() -> None:
    now = at(12)
    day_before = dt.date(now.year - 65, now.month, now.day + 1)
    assert fare_for_tap(FareCard(None, day_before), now, TABLE, LINE).amount == 200


AMOUNT_OFF = TransferRule(dt.timedelta(minutes=90), amount=100)
NOW = at(12)
WINDOW = dt.timedelta(minutes=90)


@pytest.mark.parametrize(
    ("earlier", "transfer"),
    [
        (ride(NOW), True),  # the same instant: 0 <= 0
        (ride(NOW - WINDOW + dt.timedelta(microseconds=1)), True),
        (ride(NOW - WINDOW), False),  # exactly the window ago: half-open
        (ride(NOW + dt.timedelta(microseconds=1)), False),  # a ride in the future never counts
        (ride(NOW - dt.timedelta(minutes=10), amount=0), False),  # a free ride earns nothing
        (ride(NOW - dt.timedelta(minutes=10), line=LINE), False),  # the same line
        (ride(None), False),  # a record whose time is not BCD
    ],
)
def test_transfer_window_edges(earlier: FareRide, transfer: bool) -> None:
    table = FareTable(base=200, transfer=AMOUNT_OFF)
    fare = fare_for_tap(FareCard(None, None, (earlier,)), NOW, table, LINE)
    assert (fare.transfer, fare.amount, fare.transfer_discount) == (transfer, 100 if transfer else 200, 100 * transfer)


def test_an_operator_may_count_the_same_line_and_restrict_cities_and_industries() -> None:
    same = FareTable(base=200, transfer=TransferRule(WINDOW, amount=100, same_line=True))
    assert fare_for_tap(FareCard(None, None, (ride(NOW, line=LINE),)), NOW, same, LINE).transfer
    local = TransferRule(WINDOW, amount=100, cities=frozenset({"2900"}), industries=frozenset({1, 2}))
    table = FareTable(base=200, transfer=local)
    assert fare_for_tap(FareCard(None, None, (ride(NOW),)), NOW, table, LINE).transfer
    assert not fare_for_tap(FareCard(None, None, (ride(NOW, city="1000"),)), NOW, table, LINE).transfer
    assert fare_for_tap(FareCard(None, None, (ride(NOW, industry=1),)), NOW, table, LINE).transfer
    assert not fare_for_tap(FareCard(None, None, (ride(NOW, industry=4),)), NOW, table, LINE).transfer


def test_a_percentage_transfer_rounds_the_fare_down_then_the_concession_applies() -> None:
    half_off = FareTable(base=155, card_types=(STUDENT,), transfer=TransferRule(WINDOW, percent=50))
    rides = (ride(NOW - dt.timedelta(minutes=5)),)
    fare = fare_for_tap(FareCard(None, None, rides), NOW, half_off, LINE)
    assert (fare.amount, fare.transfer_discount) == (77, 78)  # 155 * 50 // 100
    student = fare_for_tap(FareCard(2, None, rides), NOW, half_off, LINE)
    assert (student.amount, student.base, student.transfer_discount) == (38, 155, 78)  # 77 * 50 // 100
    more_than_fare = FareTable(base=80, transfer=TransferRule(WINDOW, amount=100))
    assert fare_for_tap(FareCard(None, None, rides), NOW, more_than_fare, LINE).amount == 0


def test_a_transfer_rule_takes_one_kind_of_discount() -> None:
    with pytest.raises(ValueError, match="not both"):
        TransferRule(WINDOW, amount=100, percent=50)
    with pytest.raises(ValueError, match="0 to 100"):
        TransferRule(WINDOW, percent=101)


def _flat_fare(fare: int, discount: int, birth: dt.date | None, when: dt.datetime, line: str, paid: int) -> tuple:
    """The flat fare as `[bus] fare = N` has always meant it, written out here on its own.

    The transfer discount comes off when an earlier paid ride on another line lies within the
    window before the tap; then the highest age band reached takes its percentage, rounded down.
    """
    transfer = discount > 0 and line != "0812" and paid > 0 and dt.timedelta(0) <= NOW - when < WINDOW
    amount = max(0, fare - discount) if transfer else fare
    age = None
    if birth is not None:
        age = NOW.year - birth.year - ((NOW.month, NOW.day) < (birth.month, birth.day))
    reached = [band for band in (SENIOR, ELDER) if age is not None and age >= band.min_age]
    band = max(reached, key=lambda b: b.min_age) if reached else None
    if band is not None:
        amount = amount * band.percent // 100
    return amount, fare, transfer, band.name if band is not None and band.percent < 100 else None


def test_the_flat_table_decides_as_the_flat_fare_always_did() -> None:
    """`[bus] fare = N` keeps its meaning, checked against the rule written out in `_flat_fare`."""
    bands = (SENIOR, ELDER)
    line_text, other_text = "0812", "0101"
    codes = {line_text: LINE, other_text: OTHER_LINE}
    offsets = [dt.timedelta(minutes=m) for m in (-1, 0, 30, 89, 90, 91)]
    for fare, discount, age, offset, line, paid in itertools.product(
        (200, 155), (0, 100, 250), (None, 30, 65, 70), offsets, (line_text, other_text), (0, 200)
    ):
        when = NOW - offset
        birth = None if age is None else dt.date(NOW.year - age, 1, 1)
        table = FareTable.flat(fare, bands=bands, transfer_discount=discount, transfer_window=WINDOW)
        got = fare_for_tap(FareCard(None, birth, (ride(when, codes[line], paid),)), NOW, table, LINE)
        assert (got.amount, got.base, got.transfer, got.band) == _flat_fare(fare, discount, birth, when, line, paid)
