"""No personal value of any test card in the logs or in any record, over every scenario.

The logs are structlog's JSON lines at debug level, captured for the whole session (see
conftest.tap_logs); the records are the queue files, the event streams and what the back
office received. The personal values are taken from the card profiles: names, social
security numbers, card numbers, T-Union holder names and ID numbers, birth dates, e-cash
PANs, in every shape they could take in a JSON text (as is, JSON-escaped, hex, BCD).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.daemon.bench import CARD_PROFILES, LogBuffer, iter_strings, leaks, personal_values
from tests.daemon.expected import profile
from tests.daemon.scenarios import BusRun, LibraryRun, OutOfServiceRun, PharmacyRun, TearingRun

PERSONAL = set().union(*(personal_values(profile(name)) for name in CARD_PROFILES))


@pytest.fixture(scope="module")
def every_record(
    bus_run: BusRun,
    library_run: LibraryRun,
    pharmacy_run: PharmacyRun,
    tearing_run: TearingRun,
    out_of_service_run: OutOfServiceRun,
) -> list[dict[str, Any]]:
    return [
        *bus_run.queued,
        *bus_run.queued_other_line,
        *bus_run.published,
        *library_run.queued,
        *library_run.streamed,
        *pharmacy_run.queued,
        *tearing_run.queued,
        *tearing_run.published,
        *out_of_service_run.published,
        *out_of_service_run.delivered.values(),
    ]


def test_the_search_finds_personal_values_where_they_are(pharmacy_run: PharmacyRun) -> None:
    """The POS answers are the one place holders' identities belong: the search must see them."""
    sichuan = profile("sichuan").ssse
    answer = pharmacy_run.answers["sichuan"]
    for text in (json.dumps(answer), json.dumps(answer, ensure_ascii=False)):
        assert {sichuan.ssn, sichuan.name} <= leaks(text, PERSONAL)


def test_the_logs_cover_every_scenario(tap_logs: LogBuffer, every_record: list[dict[str, Any]]) -> None:
    """Each record's tap id is in the captured logs: the capture saw every scenario."""
    events = tap_logs.events()
    text = tap_logs.text()
    missing = {record["tap_id"] for record in every_record if record["tap_id"] not in text}
    assert not missing, f"{len(missing)} taps absent from the captured logs (were loggers cached earlier?)"
    components = {event.get("component") for event in events}
    assert {"pipeline", "reader-loop", "daemon", "sam-slot", "queue", "api", "pcsc"} <= components
    assert any(event["level"] == "debug" for event in events)


def test_no_personal_value_in_the_logs(tap_logs: LogBuffer, every_record: list[dict[str, Any]]) -> None:
    assert leaks(tap_logs.text(), PERSONAL) == set()
    decoded = " ".join(text for event in tap_logs.events() for text in iter_strings(event))
    assert leaks(decoded, PERSONAL) == set()


def test_no_personal_value_in_any_record(every_record: list[dict[str, Any]]) -> None:
    assert len(every_record) > 50
    for record in every_record:
        assert leaks(json.dumps(record, ensure_ascii=False), PERSONAL) == set(), record["tap_id"]
        assert leaks(" ".join(iter_strings(record)), PERSONAL) == set(), record["tap_id"]


def test_pipeline_events_name_their_tap(tap_logs: LogBuffer, every_record: list[dict[str, Any]]) -> None:
    """One event per step, each with its tap id and its reader (supervise() names the torn tap)."""
    for event in tap_logs.events():
        if event.get("component") == "pipeline":
            assert "tap_id" in event or "torn_tap_id" in event, event
            assert "reader" in event or event["event"].startswith("tap_torn_debit"), event
