"""What each terminal kind must decide for each bundled card, from the profiles and the
shipped example configurations (bus: line 812, ¥2.00, 65+ half fare, 70+ free, regions 51 and
50; library and pharmacy: regions 51 and 50), on bench.TAP_DAY."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema

from reader.daemon.record import card_token
from sscard_sim.profile import CardProfile, load_card_profile


@dataclass(frozen=True)
class Expected:
    result: str
    reason: str
    fare: int | None = None
    band: str | None = None

    @property
    def debits(self) -> bool:
        """Whether money moves: an accepted ride with a fare above zero."""
        return self.result == "accepted" and bool(self.fare)


BUS = {
    "sichuan": Expected("accepted", "ok", fare=200),
    "chongqing": Expected("accepted", "ok", fare=200),  # ¥20.00 of own money, ¥5.00 overdraft
    "expired": Expected("denied", "expired"),  # T-Union expired 2024-01-01
    "locked-transport": Expected("denied", "app_locked"),  # SELECT answers 9303
    "no-transport": Expected("denied", "no_transport_app"),
    "low-balance": Expected("denied", "insufficient_balance", fare=200),  # ¥0.50 for a ¥2.00 fare
    "elderly": Expected("accepted", "ok", fare=0, band="elder"),  # born 1948-03-08: 78, rides free
    "second-generation": Expected("denied", "no_transport_app"),
    "cloned": Expected("denied", "card_not_genuine"),  # fails the PSAM's SSSE authentication
}

HOLDER = {
    "sichuan": Expected("accepted", "ok"),
    "chongqing": Expected("accepted", "ok"),
    "expired": Expected("denied", "expired"),  # SSSE expired 2024-01-01
    "locked-transport": Expected("accepted", "ok"),  # the SSSE is fine, only the e-purse is locked
    "no-transport": Expected("denied", "region_not_accepted"),  # Wenzhou, 330300
    "low-balance": Expected("accepted", "ok"),
    "elderly": Expected("accepted", "ok"),
    "second-generation": Expected("accepted", "ok"),  # 2.00 card: no authentication to pass
    "cloned": Expected("denied", "card_not_genuine"),
}

RECORD_FIELDS = {
    "schema_version",
    "record_type",
    "tap_id",
    "terminal_id",
    "profile",
    "reader",
    "time",
    "result",
    "reason",
    "card_token",
    "region",
    "fare",
    "fare_base",
    "time_band",
    "card_type",
    "parameters_version",
    "transfer",
    "concession",
    "balance_before",
    "balance_after",
    "atc",
    "tac",
    "psam_sequence",
    "mac2_verified",
    "recovered",
    "overdraft_allowance",
    "hotlist_version",
}
"""Every field of a tap record (an unconfirmed debit adds the masked application serial)."""

RECORD_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((resources.files("reader.daemon") / "tap-record.schema.json").read_text(encoding="utf-8")),
    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
)
"""The documented record layout (reader/daemon/tap-record.schema.json), as the back office reads it."""


def assert_documented(record: dict[str, Any]) -> None:
    """The record is what the shipped JSON Schema says a record is."""
    errors = sorted(RECORD_SCHEMA.iter_errors(record), key=lambda error: list(error.path))
    assert not errors, [f"{list(error.path)}: {error.message}" for error in errors]


def profile(name: str) -> CardProfile:
    return load_card_profile(name)


def region(name: str) -> str:
    """The region code the card's identification code starts with (GB/T 2260)."""
    return profile(name).ssse.card_id[:3].hex().upper()


def token(key: bytes, name: str) -> str:
    return card_token(key, profile(name).ssse.card_number)


def assert_identifies(record: dict[str, Any], key: bytes, name: str, expected: Expected) -> None:
    """Token and region of a record: a card that failed authentication is not taken at its word."""
    if expected.reason == "card_not_genuine":
        assert (record["card_token"], record["region"]) == (None, None)
    else:
        assert record["card_token"] == token(key, name)
        assert record["region"] == region(name)
