"""Issuer whitelist and fare table of a bus validator: pure functions of what was read and the time.

Nothing here touches a reader, a clock or a file, like `reader.daemon.policy`: the caller
passes the facts read from the card, the tap's local time and the operator's rules, so each
rule and its boundaries are tested without readers.

Which card fields the rules read (cards.md §2.3, T-Union files):

- **Issuer and city: file 0x15, bytes 0-7** (issuer id; bytes 2-3 are the issuing city's
  code, `2900` Shanghai, `1000` Beijing). The validator reads 0x15 on every tap anyway (it
  is also the FCI's 9F0C value and part of the MAC1 input), and the Shanghai metro gate tells
  its own cards from others by this field. File 0x17 carries a city code too (bytes 6-7), but
  it is only read for the interoperability flag; the city that decides is 0x15's.
- **"Another city"** therefore means: the 0x15 city code (issuer id bytes 2-3, as four hex
  digits) is not one of the operator's home cities.
- **Interoperable: file 0x17, bytes 8-9** (互通卡种): `0000` is a card of one city only, any
  other value a T-Union interoperable card. A card of another city whose 0x17 says 0000, or
  whose 0x17 could not be read, is refused `not_interoperable` (the Shanghai gate refuses
  any card whose 0x17 says 0000 or cannot be read); a card of a home city is accepted
  whatever its flag.
- **Card type: file 0x17, byte 10** (卡种类型). Its values are not laid down nationally
  (cards.md §7): the operator lists the codes its fare table knows. A card whose code is
  not listed pays as a standard card. (One public reader takes a "card type" from 0x15 byte
  0, but that byte is part of the issuer id, cards.md §2.3 and §7 item 6, so it is not used.)
- **Earlier rides: file 0x1E**, the line in the first bytes of the 7-byte line/station field
  at offset 0x0A, encoded as the operator encodes it (`LineCodec`).

Conventions an operator can rely on:

- money is in fen; every percentage rounds the amount payable *down* to the fen, as
  `policy.fare_for` does (a 50 % fare of 1.55 yuan is 0.77 yuan);
- a time band is a half-open interval of local wall time, `start <= t < end`; a band whose
  end is not after its start crosses midnight (22:00-05:00 holds 23:59:59 and 00:00 but not
  05:00); the fare outside every band is the table's base fare;
- the transfer window is half-open, like `policy.is_transfer`: an earlier paid ride exactly
  `window` ago no longer counts, one in the future (a card written by a terminal whose clock
  runs ahead) never does;
- concessions do not stack: the card type's percentage and the age band's percentage are
  alternatives and the lower applies (a tie goes to the card type, which the issuer checked);
- the fare is computed in this order: time band (base) -> transfer discount -> concession.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from protocols.tunion import ManagementInfo, ProcessRecord, PublicInfo

ISSUER_ID_LENGTH = 8
LINE_STATION_LENGTH = 7
"""Bytes 0x0A-0x10 of a 0x1E record: line, station, operator code and RFU (cards.md §2.3)."""
INDUSTRY_BUS = 0x02


class FareReason(enum.StrEnum):
    """Reason codes of the issuer checks, spelt as the tap records carry them.

    They are meant to join `policy.Reason` under the same values; until then the pipeline maps
    them by value (`policy.Reason(reason.value)` once the members exist).
    """

    ISSUER_NOT_ACCEPTED = "issuer_not_accepted"
    NOT_INTEROPERABLE = "not_interoperable"


# --------------------------------------------------------------------------- ages and fares


@dataclass(frozen=True)
class AgeBand:
    """From `min_age` on, the holder pays `percent` of the fare (0 = free)."""

    name: str
    min_age: int
    percent: int


@dataclass(frozen=True)
class Fare:
    """The amount to debit and how it was reached."""

    amount: int
    base: int
    transfer: bool
    band: str | None


def age_on(birth: dt.date, day: dt.date) -> int:
    """Completed years on `day`; the birthday itself counts (29 February → 1 March)."""
    years = day.year - birth.year
    try:
        birthday = birth.replace(year=day.year)
    except ValueError:
        birthday = dt.date(day.year, 3, 1)
    return years if day >= birthday else years - 1


def band_until(birth: dt.date, day: dt.date, bands: Sequence[AgeBand]) -> dt.date | None:
    """The first day after `day` on which the holder born on `birth` enters another band.

    None when no band lies ahead. Birthdays follow `age_on` (29 February counts on 1 March in
    common years), so the band a terminal remembers is right up to the eve of that day.
    """
    age = age_on(birth, day)
    ahead = sorted(band.min_age for band in bands if band.min_age > age)
    if not ahead:
        return None
    year = birth.year + ahead[0]
    try:
        return birth.replace(year=year)
    except ValueError:
        return dt.date(year, 3, 1)


def band_for(age: int | None, bands: Sequence[AgeBand]) -> AgeBand | None:
    """The band with the highest threshold the holder has reached, if any."""
    if age is None:
        return None
    reached = [band for band in bands if age >= band.min_age]
    return max(reached, key=lambda band: band.min_age) if reached else None



# --------------------------------------------------------------------------- issuers


def city_of(issuer_id: bytes) -> str:
    """The issuing city of a 0x15 issuer id: bytes 2-3 as four upper-case hex digits."""
    if len(issuer_id) != ISSUER_ID_LENGTH:
        raise ValueError(f"an issuer id is {ISSUER_ID_LENGTH} bytes, got {len(issuer_id)}")
    return issuer_id[2:4].hex().upper()


@dataclass(frozen=True)
class IssuerFacts:
    """What the issuer checks read from the card.

    `issuer_id` is file 0x15 bytes 0-7. `interoperable` is file 0x17 bytes 8-9 not 0000, or
    None when 0x17 was not read (absent, or a read that failed).
    """

    issuer_id: bytes
    interoperable: bool | None

    @property
    def city(self) -> str:
        return city_of(self.issuer_id)

    @classmethod
    def from_files(cls, public: PublicInfo, management: ManagementInfo | None) -> IssuerFacts:
        """From the parsed 0x15 and, if it was read, 0x17."""
        return cls(public.issuer_id, None if management is None else management.interoperable)


@dataclass(frozen=True)
class IssuerRules:
    """Which issuers a validator serves.

    `home_cities`: the operator's city codes (4 hex digits, as in 0x15 bytes 2-3); their cards
    need no interoperability flag and pass the whitelist. `issuers` (16 hex digits, the whole
    0x15 issuer id) and `cities` (4 hex digits) form the whitelist: a card of another city is
    served when its issuer id or its city is listed. With both empty there is no whitelist
    and only the interoperability rule applies. Lookups are frozenset hits, so a list of the
    ~1,000 T-Union issuers costs one hash per tap.
    """

    home_cities: frozenset[str]
    issuers: frozenset[str] = frozenset()
    cities: frozenset[str] = frozenset()

    @property
    def whitelist_in_force(self) -> bool:
        return bool(self.issuers or self.cities)


@dataclass(frozen=True)
class IssuerCheck:
    """The issuer checks' verdict; `reason` is None when the card may go on to the fare."""

    reason: FareReason | None
    home: bool
    city: str

    @property
    def accepted(self) -> bool:
        return self.reason is None


def check_issuer(card: IssuerFacts, rules: IssuerRules) -> IssuerCheck:
    """Home city first (always served), then the whitelist, then the interoperability flag.

    A listed issuer of another city is still refused when its card is not interoperable: the
    whitelist names whom the operator clears with, the flag whether this card may travel.
    """
    city = card.city
    if city in rules.home_cities:
        return IssuerCheck(None, True, city)
    if rules.whitelist_in_force and not (card.issuer_id.hex().upper() in rules.issuers or city in rules.cities):
        return IssuerCheck(FareReason.ISSUER_NOT_ACCEPTED, False, city)
    if card.interoperable is not True:
        return IssuerCheck(FareReason.NOT_INTEROPERABLE, False, city)
    return IssuerCheck(None, False, city)


# --------------------------------------------------------------------------- line codes


class LineCodeError(ValueError):
    """A line cannot be written in the operator's encoding of the 0x1E line field."""


@dataclass(frozen=True)
class LineCodec:
    """How the operator writes its line into 0x1E and reads earlier rides' lines back.

    The line takes the first `width` bytes of the 7-byte line/station field at 0x0A (the
    Shanghai gate: 2 bytes line, 2 station, 2 operator, 1 RFU).

    - `bcd`: the line number as decimal digits, right-aligned in `width` bytes BCD
      (Shanghai writes line 10 as `00 10`).
    - `table`: a code per line, for operators whose codes are not the digits (Beijing writes
      line 10 as `0A 00` on one section and `5A 00` on the other). The first code of a line is
      the one written; every code listed reads back as the line.

    `decode` gives None for a code the operator does not know (another operator's line, a
    record that is not BCD): such a ride is "another line".
    """

    kind: Literal["bcd", "table"]
    width: int = 2
    codes: tuple[tuple[str, tuple[bytes, ...]], ...] = ()
    _reverse: Mapping[bytes, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not 1 <= self.width <= LINE_STATION_LENGTH:
            raise LineCodeError(f"a line code is 1 to {LINE_STATION_LENGTH} bytes of the 0x1E field, not {self.width}")
        reverse: dict[bytes, str] = {}
        for line, codes in self.codes:
            if not codes:
                raise LineCodeError(f"line {line!r} has no code")
            for code in codes:
                if len(code) != self.width:
                    raise LineCodeError(
                        f"line {line!r}: code {code.hex().upper()} is {len(code)} bytes, the field {self.width}"
                    )
                if code in reverse:
                    raise LineCodeError(f"code {code.hex().upper()} stands for both {reverse[code]!r} and {line!r}")
                reverse[code] = line
        if self.kind == "bcd" and self.codes:
            raise LineCodeError("a BCD line code takes no table")
        object.__setattr__(self, "_reverse", reverse)

    @classmethod
    def bcd(cls, width: int = 2) -> LineCodec:
        return cls("bcd", width)

    @classmethod
    def table(cls, codes: Mapping[str, Sequence[bytes]], width: int = 2) -> LineCodec:
        return cls("table", width, tuple((line, tuple(c)) for line, c in codes.items()))

    def encode(self, line: str) -> bytes:
        """The `width` bytes the terminal writes for `line`; raises LineCodeError if it cannot."""
        if self.kind == "bcd":
            if not line.isascii() or not line.isdigit():
                raise LineCodeError(f"line {line!r} is not decimal digits, so not BCD")
            if len(line) > 2 * self.width:
                raise LineCodeError(
                    f"line {line!r} has {len(line)} digits; {self.width} bytes BCD hold {2 * self.width}"
                )
            return bytes.fromhex(line.rjust(2 * self.width, "0"))
        for name, codes in self.codes:
            if name == line:
                return codes[0]
        raise LineCodeError(f"line {line!r} is not in the line code table")

    def decode(self, line_station: bytes) -> str | None:
        """The line of an earlier ride from its 0x1E line/station field, None if unknown."""
        code = bytes(line_station[: self.width])
        if len(code) != self.width:
            return None
        if self.kind == "table":
            return self._reverse.get(code)
        digits = code.hex()
        if not digits.isdigit():
            return None
        return digits.lstrip("0") or "0"

    def code_of(self, line_station: bytes) -> bytes:
        """The raw line code of a 0x1E line/station field (what transfers compare)."""
        return bytes(line_station[: self.width])


# --------------------------------------------------------------------------- rides


@dataclass(frozen=True)
class FareRide:
    """One earlier ride from the card's 0x1E log, as the fare rules see it.

    `line_code` is the raw line code (compared for "same line"), `line` its decoded name or
    None; `city` the record's city code (bytes 0x20-0x21 as hex); `when` its local wall
    time, None when the record's time is not a BCD date.
    """

    when: dt.datetime | None
    line_code: bytes
    line: str | None
    amount: int
    city: str
    industry: int


def ride_from_record(record: ProcessRecord, codec: LineCodec) -> FareRide:
    """A 0x1E record read back with the operator's line encoding."""
    return FareRide(
        when=record.time,
        line_code=codec.code_of(record.line_station),
        line=codec.decode(record.line_station),
        amount=record.amount,
        city=record.city_code.hex().upper(),
        industry=record.industry,
    )


# --------------------------------------------------------------------------- fare table


@dataclass(frozen=True)
class TimeBand:
    """A fare for local wall times `start <= t < end`; `end <= start` crosses midnight."""

    name: str
    start: dt.time
    end: dt.time
    fare: int

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"time band {self.name!r} starts and ends at {self.start}: it holds no time, or all")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError(f"time band {self.name!r}: bands are local wall times, without a UTC offset")

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def contains(self, moment: dt.time) -> bool:
        if self.crosses_midnight:
            return moment >= self.start or moment < self.end
        return self.start <= moment < self.end


def bands_overlap(a: TimeBand, b: TimeBand) -> bool:
    """Whether two bands share any instant (each band split at midnight into plain intervals)."""

    def pieces(band: TimeBand) -> list[tuple[dt.time, dt.time | None]]:
        if band.crosses_midnight:
            return [(band.start, None), (dt.time(0), band.end)]
        return [(band.start, band.end)]

    def before(end: dt.time | None, start: dt.time) -> bool:
        return end is not None and end <= start

    return any(
        not before(end_a, start_b) and not before(end_b, start_a)
        for start_a, end_a in pieces(a)
        for start_b, end_b in pieces(b)
    )


@dataclass(frozen=True)
class CardType:
    """A card type the operator prices: file 0x17 byte 10 `code`; the holder pays `percent`."""

    name: str
    code: int
    percent: int


@dataclass(frozen=True)
class TransferRule:
    """The operator's transfer discount.

    Either `amount` fen off or `percent` off the base fare (one of them, not both). An earlier
    paid ride counts within `window` (half-open), on another line, or on any line when
    `same_line`; only rides recorded in `cities` (0x1E city code) and `industries` (0x1E
    industry code, 02 bus, 01 metro) count, each left empty meaning any.
    """

    window: dt.timedelta
    amount: int = 0
    percent: int = 0
    same_line: bool = False
    cities: frozenset[str] = frozenset()
    industries: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.amount and self.percent:
            raise ValueError("a transfer takes an amount or a percentage off, not both")
        if not 0 <= self.percent <= 100 or self.amount < 0:
            raise ValueError("a transfer discount is 0 to 100 % or a non-negative amount")

    def discounted(self, base: int) -> int:
        """The base fare after the transfer discount (percentages round the fare down)."""
        if self.percent:
            return base * (100 - self.percent) // 100
        return max(0, base - self.amount)

    def earned_by(self, rides: Iterable[FareRide], now: dt.datetime, line_code: bytes) -> bool:
        return any(self._counts(ride, now, line_code) for ride in rides)

    def _counts(self, ride: FareRide, now: dt.datetime, line_code: bytes) -> bool:
        if ride.when is None or ride.amount <= 0:
            return False
        if not self.same_line and ride.line_code == line_code:
            return False
        if self.cities and ride.city not in self.cities:
            return False
        if self.industries and ride.industry not in self.industries:
            return False
        return dt.timedelta(0) <= now - ride.when < self.window


@dataclass(frozen=True)
class FareTable:
    """An operator's fares: `base` for a standard card outside every time band (fen)."""

    base: int
    time_bands: tuple[TimeBand, ...] = ()
    card_types: tuple[CardType, ...] = ()
    age_bands: tuple[AgeBand, ...] = ()
    transfer: TransferRule | None = None

    def __post_init__(self) -> None:
        for i, band in enumerate(self.time_bands):
            for other in self.time_bands[i + 1 :]:
                if bands_overlap(band, other):
                    raise ValueError(f"time bands {band.name!r} and {other.name!r} overlap")
        codes = [t.code for t in self.card_types]
        if len(set(codes)) != len(codes):
            raise ValueError("two card types share a code")

    @classmethod
    def flat(
        cls,
        fare: int,
        *,
        bands: Sequence[AgeBand] = (),
        transfer_discount: int = 0,
        transfer_window: dt.timedelta = dt.timedelta(0),
    ) -> FareTable:
        """Today's `[bus] fare = N`: one fare, the age bands, and a transfer by amount on another line."""
        transfer = (
            TransferRule(transfer_window, amount=transfer_discount, industries=frozenset({INDUSTRY_BUS}))
            if transfer_discount > 0
            else None
        )
        return cls(base=fare, age_bands=tuple(bands), transfer=transfer)

    def time_band(self, moment: dt.time) -> TimeBand | None:
        return next((band for band in self.time_bands if band.contains(moment)), None)

    def card_type(self, code: int | None) -> CardType | None:
        return None if code is None else next((t for t in self.card_types if t.code == code), None)


@dataclass(frozen=True)
class FareCard:
    """What the fare reads from the card: 0x17 byte 10, the holder's birth date, the 0x1E rides."""

    card_type: int | None
    birth_date: dt.date | None
    rides: tuple[FareRide, ...] = ()
    known_band: AgeBand | None = None
    """The holder's age band when the birth date was not read again (a repeat rider's, kept
    by the terminal until the day it could change); used only without `birth_date`."""


@dataclass(frozen=True)
class TableFare(Fare):
    """A `policy.Fare` that also says which rows of the table made it.

    `base` is the time band's fare (or the table's base), before transfer and concession;
    `band` the age band, set only when it gave the concession; `percent` the share paid
    after the concession (100: none); `transfer_discount` the fen the transfer took off.
    """

    time_band: str | None
    card_type: str | None
    concession: Literal["card_type", "age_band"] | None
    percent: int
    transfer_discount: int


def fare_for_tap(card: FareCard, now: dt.datetime, table: FareTable, line_code: bytes) -> TableFare:
    """The fare of one tap at local wall time `now` on the line whose 0x1E code is `line_code`.

    An aware `now` is taken as its own wall time (the card's records carry wall time only).
    """
    local = now.replace(tzinfo=None)
    band = table.time_band(local.time())
    base = band.fare if band is not None else table.base
    rule = table.transfer
    transfer = rule is not None and rule.earned_by(card.rides, local, line_code)
    amount = rule.discounted(base) if rule is not None and transfer else base

    card_type = table.card_type(card.card_type)
    if card.birth_date is not None:
        age_band = band_for(age_on(card.birth_date, local.date()), table.age_bands)
    else:
        age_band = card.known_band if card.known_band in table.age_bands else None
    concession: Literal["card_type", "age_band"] | None = None
    percent = 100
    if card_type is not None and card_type.percent < percent:
        concession, percent = "card_type", card_type.percent
    if age_band is not None and age_band.percent < percent:
        concession, percent = "age_band", age_band.percent
    paid = amount * percent // 100
    return TableFare(
        amount=paid,
        base=base,
        transfer=transfer,
        band=age_band.name if concession == "age_band" and age_band is not None else None,
        time_band=band.name if band is not None else None,
        card_type=card_type.name if card_type is not None else None,
        concession=concession,
        percent=percent,
        transfer_discount=base - amount,
    )


@dataclass(frozen=True)
class FareRules:
    """What the fare function needs besides the card: the table and the line's 0x1E code."""

    table: FareTable
    line_codec: LineCodec
    line_code: bytes



__all__ = [
    "AgeBand",
    "CardType",
    "Fare",
    "FareCard",
    "FareReason",
    "FareRide",
    "FareRules",
    "FareTable",
    "IssuerCheck",
    "IssuerFacts",
    "IssuerRules",
    "LineCodeError",
    "LineCodec",
    "TableFare",
    "TimeBand",
    "TransferRule",
    "age_on",
    "band_for",
    "band_until",
    "bands_overlap",
    "check_issuer",
    "city_of",
    "fare_for_tap",
    "ride_from_record",
]
