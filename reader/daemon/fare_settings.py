"""Settings of `[bus.whitelist]` and `[bus.fares]`, and the same tables in a back-office bundle.

The models follow `reader.config`: frozen, unknown keys refused, no inf or nan, and values
validated as the TOML gives them (TOML local times arrive as their ISO text, "07:00:00").
Each model's `to_rules()` builds the pure objects of `reader.daemon.fares`; every rule those
objects would refuse at run time is refused here first, with the key and the reason, so a
terminal never starts with a table it cannot apply.

Both tables are optional. Without `[bus.fares]` the validator charges `[bus] fare` with the
`[bus] bands` and `[bus] transfer_discount` exactly as before (`flat_rules`). Without
`[bus.whitelist]` no issuer check runs.

    [bus.whitelist]
    home_cities = ["2900"]                # 0x15 issuer id bytes 2-3 of the operator's own city
    cities = ["1000", "5810"]             # cities whose cards are served (if interoperable)
    issuers = ["02205810FFFFFFFF"]        # or whole issuer ids (0x15 bytes 0-7)

    [bus.fares]
    time_bands = [
      { name = "peak", start = "07:00", end = "09:00" },
      { name = "night", start = "22:00", end = "05:00" },   # crosses midnight
    ]
    card_types = { student = 2, elder = 3 }                 # name -> 0x17 byte 10
    [bus.fares.by_band]                                     # fen, a standard card; every band needs one
    peak = 250
    night = 300
    [bus.fares.by_card_type]                                # percent of the fare paid
    student = 50
    elder = 0
    [bus.fares.transfer]
    percent = 50                                            # or discount = 100 (fen)
    window_minutes = 90
    same_line = false
    [bus.fares.line_code]
    encoding = "bcd"                                        # or "table" with table = { "8" = "0800" }
    width = 2
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reader.daemon.fares import (
    INDUSTRY_BUS,
    LINE_STATION_LENGTH,
    AgeBand,
    CardType,
    FareRules,
    FareTable,
    IssuerRules,
    LineCodec,
    LineCodeError,
    TimeBand,
    TransferRule,
    bands_overlap,
)

MAX_FARE = 100_000
"""Fen (¥1,000): the ceiling `[bus] fare` has; a fare beyond it is a typing mistake."""
DAY_MINUTES = 24 * 60

CityCode = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{4}$", description="4 hex digits, 0x15 bytes 2-3")]
IssuerId = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{16}$", description="16 hex digits, 0x15 bytes 0-7")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")]
Fen = Annotated[int, Field(ge=0, le=MAX_FARE)]
Percent = Annotated[int, Field(ge=0, le=100)]

_TIME = re.compile(r"^(?P<h>[0-9]{2}):(?P<m>[0-9]{2})(:(?P<s>[0-9]{2}))?$")


class _Section(BaseModel):
    """As `reader.config._Section`: unknown keys refused, frozen, no inf or nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _wall_time(text: str, *, end: bool) -> dt.time:
    """'HH:MM' or 'HH:MM:SS' local wall time; '24:00' only as an end (midnight, after the day)."""
    match = _TIME.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a local time 'HH:MM' or 'HH:MM:SS'")
    hour, minute, second = int(match["h"]), int(match["m"]), int(match["s"] or 0)
    if end and (hour, minute, second) == (24, 0, 0):
        return dt.time(0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59:59{', or 24:00 as an end' if end else ''})")
    return dt.time(hour, minute, second)


# --------------------------------------------------------------------------- whitelist


class WhitelistSettings(_Section):
    """`[bus.whitelist]`: the operator's cities and the issuers it clears with.

    A card of a home city is always served. A card of another city is served when its issuer
    id or its city is listed here and its 0x17 says it is interoperable.
    """

    home_cities: list[CityCode] = Field(min_length=1, max_length=16)
    cities: list[CityCode] = Field(default=[], max_length=1_000)
    issuers: list[IssuerId] = Field(default=[], max_length=4_000)

    @model_validator(mode="after")
    def _something_listed(self) -> WhitelistSettings:
        """An empty list would refuse every card of another city: that is `cities = []` by mistake."""
        if not self.cities and not self.issuers:
            raise ValueError(
                "a whitelist lists cities or issuers; to serve every interoperable card, leave out [bus.whitelist]"
            )
        return self

    def to_rules(self) -> IssuerRules:
        return IssuerRules(
            home_cities=frozenset(c.upper() for c in self.home_cities),
            issuers=frozenset(i.upper() for i in self.issuers),
            cities=frozenset(c.upper() for c in self.cities),
        )


# --------------------------------------------------------------------------- fares


class TimeBandSettings(_Section):
    """One time band: local wall time `start <= t < end`; an end not after the start crosses midnight."""

    name: Name
    start: str = Field(description="local time 'HH:MM' or 'HH:MM:SS'")
    end: str = Field(description="local time 'HH:MM' or 'HH:MM:SS', or '24:00'")

    @field_validator("start")
    @classmethod
    def _start_time(cls, value: str) -> str:
        _wall_time(value, end=False)
        return value

    @field_validator("end")
    @classmethod
    def _end_time(cls, value: str) -> str:
        _wall_time(value, end=True)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeBandSettings:
        if _wall_time(self.start, end=False) == _wall_time(self.end, end=True):
            raise ValueError(f"time band {self.name!r} starts where it ends ({self.start}): it holds no time, or all")
        return self

    def band(self, fare: int) -> TimeBand:
        return TimeBand(self.name, _wall_time(self.start, end=False), _wall_time(self.end, end=True), fare)


class TransferSettings(_Section):
    """`[bus.fares.transfer]`: the operator's transfer discount (one of `discount` or `percent`)."""

    discount: Fen | None = Field(default=None, description="fen off the fare")
    percent: Percent | None = Field(default=None, description="percent off the fare (the fare rounds down)")
    window_minutes: float = Field(gt=0, le=DAY_MINUTES)
    same_line: bool = Field(default=False, description="whether an earlier ride on this same line counts")
    cities: list[CityCode] = Field(default=[], description="0x1E city codes whose rides count; empty: any")
    industries: list[Annotated[int, Field(ge=0, le=255)]] = Field(
        default=[INDUSTRY_BUS], description="0x1E industry codes whose rides count (2 bus, 1 metro); empty: any"
    )

    @model_validator(mode="after")
    def _one_discount(self) -> TransferSettings:
        if (self.discount is None) == (self.percent is None):
            raise ValueError("a transfer takes either discount (fen) or percent off, exactly one of them")
        return self

    def to_rules(self) -> TransferRule:
        return TransferRule(
            window=dt.timedelta(minutes=self.window_minutes),
            amount=self.discount or 0,
            percent=self.percent or 0,
            same_line=self.same_line,
            cities=frozenset(c.upper() for c in self.cities),
            industries=frozenset(self.industries),
        )


class LineCodeSettings(_Section):
    """`[bus.fares.line_code]`: how the line is written in, and read back from, the 0x1E record.

    `bcd`: the line's digits right-aligned in `width` bytes BCD. `table`: a hex code of
    `width` bytes per line, or a list of codes (the first is written, all read back).
    """

    encoding: Literal["bcd", "table"] = "bcd"
    width: int = Field(default=2, ge=1, le=LINE_STATION_LENGTH, description="bytes of the 7-byte line/station field")
    table: dict[str, str | list[str]] = {}

    @model_validator(mode="after")
    def _codes_fit(self) -> LineCodeSettings:
        self.codec()
        return self

    def _codes(self) -> dict[str, list[bytes]]:
        codes: dict[str, list[bytes]] = {}
        for line, given in self.table.items():
            texts = [given] if isinstance(given, str) else given
            raw: list[bytes] = []
            for text in texts:
                if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", text):
                    raise ValueError(f"line {line!r}: code {text!r} is not hex bytes")
                raw.append(bytes.fromhex(text))
            codes[line] = raw
        return codes

    def codec(self) -> LineCodec:
        """The codec; raises ValueError naming the line whose code does not fit the 0x1E field."""
        if self.encoding == "bcd" and self.table:
            raise ValueError("encoding 'bcd' takes no table; a table of codes needs encoding = 'table'")
        if self.encoding == "table" and not self.table:
            raise ValueError("encoding 'table' needs a table of line codes")
        try:
            if self.encoding == "bcd":
                return LineCodec.bcd(self.width)
            return LineCodec.table(self._codes(), self.width)
        except LineCodeError as error:
            raise ValueError(str(error)) from None


class FareTableSettings(_Section):
    """`[bus.fares]`: time bands, card types and their fares, the transfer rule, the line encoding."""

    time_bands: list[TimeBandSettings] = Field(default=[], max_length=24)
    by_band: dict[str, Fen] = Field(default={}, description="fen for a standard card in each time band")
    card_types: dict[str, Annotated[int, Field(ge=0, le=255)]] = Field(
        default={}, description="card type name -> its code in file 0x17 byte 10"
    )
    by_card_type: dict[str, Percent] = Field(default={}, description="percent of the fare each card type pays")
    transfer: TransferSettings | None = None
    line_code: LineCodeSettings = LineCodeSettings()

    @model_validator(mode="after")
    def _table_complete(self) -> FareTableSettings:
        self._check_time_bands()
        self._check_card_types()
        return self

    def _check_time_bands(self) -> None:
        """Each band named once, priced, and apart from the others."""
        names = [band.name for band in self.time_bands]
        if len(set(names)) != len(names):
            raise ValueError("two time bands share a name")
        for name in names:
            if name not in self.by_band:
                raise ValueError(f"time band {name!r} has no fare: add {name} = <fen> to [bus.fares.by_band]")
        for name in self.by_band:
            if name not in names:
                raise ValueError(f"by_band prices {name!r}, which is not a time band ({', '.join(names) or 'none'})")
        bands = [band.band(self.by_band[band.name]) for band in self.time_bands]
        for i, band in enumerate(bands):
            for other in bands[i + 1 :]:
                if bands_overlap(band, other):
                    raise ValueError(
                        f"time bands {band.name!r} ({_span(band)}) and {other.name!r} ({_span(other)}) overlap"
                    )

    def _check_card_types(self) -> None:
        """Each card type with a code of its own and a percentage, and no price for an unknown one."""
        codes = list(self.card_types.values())
        if len(set(codes)) != len(codes):
            raise ValueError("two card types share a code")
        for name in self.by_card_type:
            if name not in self.card_types:
                known = ", ".join(self.card_types) or "none"
                raise ValueError(f"by_card_type prices unknown card type {name!r} (card_types: {known})")
        for name in self.card_types:
            if name not in self.by_card_type:
                raise ValueError(f"card type {name!r} has no fare: add {name} = <percent> to [bus.fares.by_card_type]")

    def table(self, base: int, age_bands: Sequence[AgeBand], flat_transfer: TransferRule | None) -> FareTable:
        """The pure table, with `[bus] fare` as the base and `[bus] bands` as the age bands.

        `flat_transfer` is what `[bus] transfer_discount` says; it applies unless this table
        has its own transfer (having both is refused by `bus_fare_rules`).
        """
        return FareTable(
            base=base,
            time_bands=tuple(band.band(self.by_band[band.name]) for band in self.time_bands),
            card_types=tuple(CardType(name, code, self.by_card_type[name]) for name, code in self.card_types.items()),
            age_bands=tuple(age_bands),
            transfer=self.transfer.to_rules() if self.transfer is not None else flat_transfer,
        )

    def to_rules(
        self,
        *,
        line: str,
        fare: int,
        age_bands: Sequence[AgeBand] = (),
        transfer_discount: int = 0,
        transfer_window_minutes: float = 0,
    ) -> FareRules:
        """The pure rules of this table under a `[bus]` section (see `bus_fare_rules`)."""
        return bus_fare_rules(
            line=line,
            fare=fare,
            age_bands=age_bands,
            transfer_discount=transfer_discount,
            transfer_window_minutes=transfer_window_minutes,
            fares=self,
        )


def _span(band: TimeBand) -> str:
    return f"{band.start.isoformat('minutes')}-{band.end.isoformat('minutes')}"


def bus_fare_rules(
    *,
    line: str,
    fare: int,
    age_bands: Sequence[AgeBand] = (),
    transfer_discount: int = 0,
    transfer_window_minutes: float = 0,
    fares: FareTableSettings | None = None,
) -> FareRules:
    """The fare rules of a `[bus]` section: its flat keys, and `[bus.fares]` when present.

    Raises ValueError when the two disagree (a transfer given in both places) or when the
    line cannot be written in the configured line encoding.
    """
    flat = (
        TransferRule(
            dt.timedelta(minutes=transfer_window_minutes),
            amount=transfer_discount,
            industries=frozenset({INDUSTRY_BUS}),
        )
        if transfer_discount > 0
        else None
    )
    if fares is None:
        codec = LineCodec.bcd()
        table = FareTable.flat(
            fare,
            bands=age_bands,
            transfer_discount=transfer_discount,
            transfer_window=dt.timedelta(minutes=transfer_window_minutes),
        )
    else:
        if fares.transfer is not None and transfer_discount > 0:
            raise ValueError("give the transfer in [bus.fares.transfer] or as [bus] transfer_discount, not both")
        codec = fares.line_code.codec()
        table = fares.table(fare, age_bands, flat)
    try:
        line_code = codec.encode(line)
    except LineCodeError as error:
        raise ValueError(f"[bus] line: {error}") from None
    return FareRules(table, codec, line_code)


class BundleFares(FareTableSettings):
    """The fare table of a back-office parameter bundle: it also carries the base fare and age bands."""

    base: Annotated[int, Field(gt=0, le=MAX_FARE)]
    age_bands: list[BundleAgeBand] = Field(default=[], max_length=16)

    @field_validator("age_bands")
    @classmethod
    def _distinct_ages(cls, bands: list[BundleAgeBand]) -> list[BundleAgeBand]:
        ages = [band.min_age for band in bands]
        if len(set(ages)) != len(ages):
            raise ValueError("two age bands start at the same age; each min_age may appear once")
        return bands

    def rules(self, line: str) -> FareRules:
        """The bundle's rules for the terminal's line; raises ValueError if the line has no code."""
        codec = self.line_code.codec()
        try:
            line_code = codec.encode(line)
        except LineCodeError as error:
            raise ValueError(f"line {line!r}: {error}") from None
        bands = tuple(AgeBand(b.name, b.min_age, b.percent) for b in self.age_bands)
        return FareRules(self.table(self.base, bands, None), codec, line_code)


class BundleAgeBand(_Section):
    """As `[[bus.bands]]`: from `min_age` on the holder pays `percent` of the fare."""

    name: Name
    min_age: int = Field(ge=0, le=150)
    percent: Percent


BundleFares.model_rebuild()

__all__ = [
    "BundleAgeBand",
    "BundleFares",
    "FareRules",
    "FareTableSettings",
    "LineCodeSettings",
    "TimeBandSettings",
    "TransferSettings",
    "WhitelistSettings",
    "bus_fare_rules",
]
