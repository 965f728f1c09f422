"""Library gate and pharmacy POS through pcscd and vpcd: the decision for every bundled card,
the gate relay on a serial line, the event stream, and the holder's identity for the POS."""

from __future__ import annotations

import json

import pytest

from reader.peripherals.relay import lcus_command
from tests.daemon.bench import CARD_PROFILES, iter_strings, leaks, personal_values
from tests.daemon.expected import HOLDER, RECORD_FIELDS, assert_documented, assert_identifies, profile
from tests.daemon.scenarios import LibraryRun, PharmacyRun

RELAY_ON, RELAY_OFF = lcus_command(1, True), lcus_command(1, False)
ACCEPTED = [name for name in CARD_PROFILES if HOLDER[name].result == "accepted"]
DENIED = [name for name in CARD_PROFILES if HOLDER[name].result != "accepted"]


@pytest.mark.parametrize("name", CARD_PROFILES)
def test_library_decision(library_run: LibraryRun, name: str) -> None:
    expected = HOLDER[name]
    tap = library_run.first[name]
    record = tap.record
    assert (record["result"], record["reason"]) == (expected.result, expected.reason)
    assert (record["profile"], record["fare"], record["balance_before"], record["tac"]) == ("library", None, None, None)
    assert_identifies(record, library_run.token_key, name, expected)
    (signal,) = tap.signals
    assert signal.open_gate == (expected.result == "accepted")


def test_library_gate_relay_opens_once_per_accepted_card(library_run: LibraryRun) -> None:
    """The relay board hears one "on" per accepted card and ends released."""
    data = library_run.relay_bytes
    commands = [data[i : i + 4] for i in range(0, len(data), 4)]
    assert set(commands) <= {RELAY_ON, RELAY_OFF}, data.hex(" ")
    assert commands.count(RELAY_ON) == len(ACCEPTED)
    assert commands[-1] == RELAY_OFF


def test_library_event_stream_carries_every_committed_record(library_run: LibraryRun) -> None:
    assert len(library_run.queued) == len(CARD_PROFILES)
    assert library_run.streamed == library_run.queued
    assert all(set(record) == RECORD_FIELDS for record in library_run.queued)
    for record in library_run.queued:
        assert_documented(record)


@pytest.mark.parametrize("name", CARD_PROFILES)
def test_pharmacy_decision(pharmacy_run: PharmacyRun, name: str) -> None:
    expected = HOLDER[name]
    record = pharmacy_run.first[name].record
    assert (record["result"], record["reason"]) == (expected.result, expected.reason)
    assert record["profile"] == "pharmacy"
    assert_identifies(record, pharmacy_run.token_key, name, expected)


@pytest.mark.parametrize("name", ACCEPTED)
def test_pos_gets_the_holder_of_an_accepted_card(pharmacy_run: PharmacyRun, name: str) -> None:
    ssse = profile(name).ssse
    record = pharmacy_run.first[name].record
    assert pharmacy_run.status_code_of[name] == 200
    assert pharmacy_run.answers[name] == {
        "tap_id": record["tap_id"],
        "result": "accepted",
        "reason": "ok",
        "card_token": record["card_token"],
        "region": record["region"],
        "card_identification_code": ssse.card_id.hex().upper(),
        "card_number": ssse.card_number,
        "social_security_number": ssse.ssn,
        "name": ssse.name + (ssse.name_extension or ""),
    }


@pytest.mark.parametrize("name", DENIED)
def test_pos_gets_the_reason_and_no_identity_for_a_refused_card(pharmacy_run: PharmacyRun, name: str) -> None:
    record = pharmacy_run.first[name].record
    assert pharmacy_run.status_code_of[name] == 200
    assert pharmacy_run.answers[name] == {
        "tap_id": record["tap_id"],
        "result": "denied",
        "reason": HOLDER[name].reason,
    }


def test_pos_needs_the_token(pharmacy_run: PharmacyRun) -> None:
    assert pharmacy_run.unauthorised_status == 401
    assert pharmacy_run.config.api is not None
    assert pharmacy_run.listen == pharmacy_run.config.api.listen


@pytest.mark.parametrize("name", CARD_PROFILES)
def test_pharmacy_record_carries_no_name_and_no_id_number(pharmacy_run: PharmacyRun, name: str) -> None:
    record = pharmacy_run.first[name].record
    assert set(record) == RECORD_FIELDS
    assert leaks(json.dumps(record), personal_values(profile(name))) == set()
    assert leaks(" ".join(iter_strings(record)), personal_values(profile(name))) == set()


def test_pharmacy_queue_holds_what_was_committed(pharmacy_run: PharmacyRun) -> None:
    assert pharmacy_run.queued == [pharmacy_run.first[name].record for name in pharmacy_run.first]
