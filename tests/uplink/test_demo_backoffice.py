"""The demo's embedded back office (sscard_sim/backoffice.py) against the real HTTP uplink.

The demo can only claim "delivered" if the uplink really drains to it: these tests run the
real HttpUplink over loopback HTTP into it, and post by hand what a broken terminal or a
replay would send.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reader.uplink.http_uplink import HttpUplink, sign
from reader.uplink.queue import TapQueue
from reader.uplink.settings import HttpUplinkSettings
from sscard_sim.backoffice import BackOffice
from tests.support.taps import tap_record
from tests.support.waiting import wait_until
from tests.uplink.conftest import FAST_BACKOFF, TERMINAL

KEY = b"demo-signing-key-for-this-test"


@pytest.fixture
def office() -> Iterator[BackOffice]:
    with BackOffice(hmac_key=KEY) as server:
        yield server


def _settings(url: str, key_file: Path) -> HttpUplinkSettings:
    return HttpUplinkSettings(
        enabled=True,
        url=url,
        batch_size=7,
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
        backoff=FAST_BACKOFF,
        idle_poll_s=0.1,
        hmac_key_file=key_file,
    )


def test_the_http_uplink_drains_the_queue_into_it(queue: TapQueue, office: BackOffice, tmp_path: Path) -> None:
    key_file = tmp_path / "uplink.key"
    key_file.write_bytes(KEY + b"\n")
    ids = []
    for n in range(23):
        record = tap_record(n)
        queue.enqueue(record)
        ids.append(record["tap_id"])
    uplink = HttpUplink(queue, _settings(office.url, key_file))
    uplink.start()
    try:
        assert wait_until(lambda: queue.status().depth == 0, timeout=10.0), uplink.stats()
    finally:
        uplink.stop()
    assert [record["tap_id"] for record in office.records()] == ids
    assert office.count(TERMINAL) == 23 and office.count("ANOTHER-TERMINAL") == 0
    assert (office.batches, office.received, office.refused) == (4, 23, 0), "batches of 7: 7 + 7 + 7 + 2"
    assert uplink.stats().delivered == 23
    assert queue.status().poison == 0


def _post(office: BackOffice, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(office.url, content=body, headers={"Content-Type": "application/json", **headers})


def _batch(start: int, count: int) -> tuple[bytes, dict[str, str], list[str]]:
    """A signed batch shaped as the uplink sends it: body, headers, tap ids.

    The key is any structured-header string fixed by the rows; the back office checks its
    form and that it is never reused for another body, not how it was derived.
    """
    records = [tap_record(n) for n in range(start, start + count)]
    ids = [str(record["tap_id"]) for record in records]
    body = ('{"taps":[' + ",".join(json.dumps(record) for record in records) + "]}").encode()
    key = hashlib.sha256("\x1e".join(ids).encode()).hexdigest()[:32]
    return body, {"Idempotency-Key": f'"{key}"', "X-Signature": sign(KEY, body)}, ids


def test_the_answer_names_every_tap_of_the_batch_also_when_resent(office: BackOffice) -> None:
    body, headers, ids = _batch(0, 3)
    first = _post(office, body, headers)
    again = _post(office, body, headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == {"accepted": ids}
    assert (office.count(), office.received, office.batches) == (3, 6, 2), "kept once, counted twice"


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"Idempotency-Key": None}, 400),
        ({"Idempotency-Key": "no-quotes"}, 400),
        ({"X-Signature": None}, 401),
        ({"X-Signature": "sha256=" + "0" * 64}, 401),
    ],
    ids=["no key", "key not a structured string", "unsigned", "wrong signature"],
)
def test_a_batch_it_cannot_trust_is_refused_and_not_kept(
    office: BackOffice, change: dict[str, str | None], status: int
) -> None:
    body, headers, _ = _batch(0, 2)
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    answer = _post(office, body, headers)
    assert answer.status_code == status
    assert "accepted" not in answer.json()
    assert (office.count(), office.refused) == (0, 1)


def test_an_idempotency_key_reused_for_another_body_is_refused(office: BackOffice) -> None:
    body, headers, _ = _batch(0, 2)
    other, other_headers, _ = _batch(5, 2)
    assert _post(office, body, headers).status_code == 200
    reused = {**other_headers, "Idempotency-Key": headers["Idempotency-Key"]}
    assert _post(office, other, reused).status_code == 422
    assert office.count() == 2


def test_a_body_that_is_not_a_batch_is_refused(office: BackOffice) -> None:
    for body in (b"not json", b'{"records": []}', b'{"taps": [{"terminal_id": "T"}]}'):
        headers = {"Idempotency-Key": '"abc"', "X-Signature": sign(KEY, body)}
        assert _post(office, body, headers).status_code == 400, body
    assert office.count() == 0
