"""The HTTP uplink against a real loopback back office that misbehaves on request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.uplink.http_uplink import HttpUplink, Verdict, idempotency_key
from reader.uplink.queue import TapQueue
from reader.uplink.settings import HttpUplinkSettings, TlsSettings
from tests.support.backoffice import BackOfficeServer, Fault, ServerTls
from tests.support.pki import Pki, make_pki
from tests.support.taps import tap_record
from tests.support.waiting import wait_until
from tests.uplink.conftest import FAST_BACKOFF, TERMINAL


def settings_for(url: str, **overrides: object) -> HttpUplinkSettings:
    values: dict[str, object] = {
        "enabled": True,
        "url": url,
        "batch_size": 50,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        "backoff": FAST_BACKOFF,
        "idle_poll_s": 0.1,
    }
    values.update(overrides)
    return HttpUplinkSettings.model_validate(values)


@pytest.fixture
def uplinks() -> Iterator[list[HttpUplink]]:
    started: list[HttpUplink] = []
    yield started
    for uplink in started:
        uplink.stop()


def run(uplinks: list[HttpUplink], queue: TapQueue, settings: HttpUplinkSettings) -> HttpUplink:
    uplink = HttpUplink(queue, settings)
    uplink.start()
    uplinks.append(uplink)
    return uplink


def fill(queue: TapQueue, count: int, start: int = 0) -> list[str]:
    ids = []
    for n in range(start, start + count):
        record = tap_record(n)
        queue.enqueue(record)
        ids.append(record["tap_id"])
    return ids


def drained(queue: TapQueue) -> bool:
    return queue.status().depth == 0


def test_batches_arrive_once_in_order_with_idempotency_keys(
    queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    ids = fill(queue, 500)
    uplink = run(uplinks, queue, settings_for(backoffice.url))
    assert backoffice.wait_for(500, 20)
    assert wait_until(lambda: drained(queue), 5)
    assert list(backoffice.taps) == [(TERMINAL, i) for i in ids]  # order kept per terminal
    assert backoffice.duplicates == 0
    assert all(r.idempotency_key and r.status == 200 for r in backoffice.requests)
    assert len({r.idempotency_key for r in backoffice.requests}) == len(backoffice.requests)
    stats = uplink.stats()
    assert stats.delivered == 500 and stats.failures == 0 and uplink.is_alive()
    assert queue.status().delivered_total == 500
    uplink.stop()
    assert not uplink.is_alive()


def test_server_errors_are_retried_and_deduplicated(
    queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    backoffice.misbehave(Fault(status=500, record=True), Fault(status=500), Fault(status=503), Fault(status=502))
    fill(queue, 120)
    uplink = run(uplinks, queue, settings_for(backoffice.url))
    assert backoffice.wait_for(120, 20)
    assert wait_until(lambda: drained(queue), 5)
    assert [r.status for r in backoffice.requests[:5]] == [500, 500, 503, 502, 200]
    # The first batch was processed before its 500: sent again, stored once.
    assert backoffice.duplicates == 50
    assert len(backoffice.taps) == 120
    assert uplink.stats().failures == 4
    status = queue.status()
    assert status.errors_total == 4 and status.poison == 0


def test_retry_after_is_honoured(queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink]) -> None:
    backoffice.misbehave(Fault(status=429, headers={"Retry-After": "1"}))
    fill(queue, 10)
    run(uplinks, queue, settings_for(backoffice.url))
    assert backoffice.wait_for(10, 20)
    first, second = backoffice.requests[:2]
    assert (first.status, second.status) == (429, 200)
    assert second.idempotency_key == first.idempotency_key  # same rows, same key
    assert second.at - first.at >= 0.95  # not before the server said so


def test_slow_answers_time_out_and_the_resend_is_deduplicated(
    queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    backoffice.misbehave(Fault(delay_s=1.2), Fault(delay_s=1.2))
    fill(queue, 60)
    uplink = run(uplinks, queue, settings_for(backoffice.url, read_timeout_s=0.3))
    assert backoffice.wait_for(60, 20)
    assert wait_until(lambda: drained(queue), 10)
    assert len(backoffice.taps) == 60
    assert backoffice.duplicates >= 50
    assert "ReadTimeout" in (uplink.stats().last_error or "")


def test_connection_resets_before_and_after_processing(
    queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    backoffice.misbehave(Fault(reset="before"), Fault(reset="after"), Fault(reset="after"))
    fill(queue, 100)
    uplink = run(uplinks, queue, settings_for(backoffice.url))
    assert backoffice.wait_for(100, 20)
    assert wait_until(lambda: drained(queue), 5)
    assert backoffice.pending_faults == 0
    assert len(backoffice.taps) == 100
    assert backoffice.duplicates == 100  # both "after" resets had stored a batch of 50
    assert uplink.stats().failures == 3
    assert queue.status().poison == 0


def test_a_refused_tap_is_isolated_as_poison_and_the_rest_delivered(queue: TapQueue, uplinks: list[HttpUplink]) -> None:
    with BackOfficeServer(refuse=lambda record: record["seq"] == 37) as backoffice:
        fill(queue, 100)
        uplink = run(uplinks, queue, settings_for(backoffice.url))
        assert backoffice.wait_for(99, 20)
        assert wait_until(lambda: drained(queue), 5)
        poisoned = list(queue.iter_poison())
        assert [p.tap.record()["seq"] for p in poisoned] == [37]
        assert poisoned[0].reason.startswith("http 422")
        assert (TERMINAL, tap_record(37)["tap_id"]) not in backoffice.taps
        assert uplink.stats().set_aside == 1
        assert len(backoffice.requests) < 20  # halving, not one request per tap, not forever
        # The back office fixes its side; the operator retries the poison.
        backoffice.refuse = None
        assert queue.retry_poison() == 1
        assert backoffice.wait_for(100, 10)
        assert wait_until(lambda: drained(queue) and queue.status().poison == 0, 5)


def test_hmac_signature_and_retry_poison_after_a_key_fix(
    queue: TapQueue, tmp_path: Path, uplinks: list[HttpUplink]
) -> None:
    good, bad = tmp_path / "good.key", tmp_path / "bad.key"
    good.write_bytes(b"terminal-key-0123456789abcdef\n")
    bad.write_bytes(b"stale-key\n")
    with BackOfficeServer(hmac_key=b"terminal-key-0123456789abcdef") as backoffice:
        fill(queue, 3)
        wrong = run(uplinks, queue, settings_for(backoffice.url, batch_size=3, hmac_key_file=bad))
        assert wait_until(lambda: queue.status().poison == 3, 10)
        wrong.stop()
        assert backoffice.taps == {}
        assert {r.status for r in backoffice.requests} == {401}
        assert queue.retry_poison() == 3
        run(uplinks, queue, settings_for(backoffice.url, hmac_key_file=good))
        assert backoffice.wait_for(3, 10)
        assert wait_until(lambda: drained(queue), 5)


@pytest.fixture
def tls_backoffice(pki: Pki) -> Iterator[BackOfficeServer]:
    tls = ServerTls(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert)
    with BackOfficeServer(tls=tls) as server:
        yield server


def test_mutual_tls_delivery(
    queue: TapQueue, pki: Pki, tls_backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    cert, key = pki.client(TERMINAL)
    tls = TlsSettings(ca_file=pki.ca_cert, client_cert_file=cert, client_key_file=key)
    fill(queue, 80)
    run(uplinks, queue, settings_for(tls_backoffice.url, tls=tls))
    assert tls_backoffice.wait_for(80, 20)
    assert wait_until(lambda: drained(queue), 5)
    assert tls_backoffice.tls_failures == []


def test_tls_without_client_certificate_delivers_nothing_and_loses_nothing(
    queue: TapQueue, pki: Pki, tls_backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    fill(queue, 20)
    uplink = run(uplinks, queue, settings_for(tls_backoffice.url, tls=TlsSettings(ca_file=pki.ca_cert)))
    assert wait_until(lambda: uplink.stats().failures >= 3, 10)
    uplink.stop()
    assert tls_backoffice.taps == {}
    assert tls_backoffice.tls_failures
    status = queue.status()
    assert (status.depth, status.poison) == (20, 0)


def test_tls_server_from_an_untrusted_ca_is_refused(
    queue: TapQueue, pki: Pki, tmp_path: Path, tls_backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    other = make_pki(tmp_path / "other-ca", clients=(TERMINAL,))
    cert, key = other.client(TERMINAL)
    tls = TlsSettings(ca_file=other.ca_cert, client_cert_file=cert, client_key_file=key)
    fill(queue, 5)
    uplink = run(uplinks, queue, settings_for(tls_backoffice.url, tls=tls))
    assert wait_until(lambda: uplink.stats().failures >= 2, 10)
    uplink.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in (uplink.stats().last_error or "")
    assert tls_backoffice.taps == {}
    assert queue.status().depth == 5


def test_idempotency_key_depends_only_on_the_rows(queue: TapQueue) -> None:
    fill(queue, 4)
    taps = queue.batch(4)
    assert idempotency_key(taps) == idempotency_key(queue.batch(4))
    assert idempotency_key(taps[:3]) != idempotency_key(taps)
    assert len(idempotency_key(taps)) == 32


# -- a delivery is what the back office names as accepted -------------------------------

SLOW_RETRY = {"backoff": {"initial_s": 1.5, "max_s": 1.5}}  # 0.75-1.5 s: time to look at the queue


def queued_ids(queue: TapQueue) -> list[str]:
    return [tap.tap_id for tap in queue.iter_taps()]


def first_retry(queue: TapQueue) -> bool:
    """True once the first failed delivery is recorded (before the retry, given SLOW_RETRY)."""
    return wait_until(lambda: queue.status().errors_total >= 1, 10)


CAPTIVE_PORTAL = b"<!DOCTYPE html><html><head><title>Log in</title></head><body>Wi-Fi login</body></html>"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(body=b""), id="empty-body"),
        pytest.param(Fault(body=CAPTIVE_PORTAL, content_type="text/html"), id="html-page"),
        pytest.param(Fault(body=b'{"status": "ok"}'), id="json-naming-nothing"),
        pytest.param(Fault(body=b'{"accepted": 10}'), id="json-count-only"),
        pytest.param(Fault(accept=lambda ids: [*ids[:-1], "0000-9999999999"]), id="json-naming-wrong-taps"),
        pytest.param(Fault(accept=lambda ids: []), id="json-naming-none"),
        pytest.param(Fault(body=b"", status=204), id="204-no-content"),
    ],
)
def test_a_2xx_that_does_not_name_the_batch_is_a_failed_delivery(
    queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink], fault: Fault
) -> None:
    backoffice.misbehave(fault)
    ids = fill(queue, 10)
    uplink = run(uplinks, queue, settings_for(backoffice.url, **SLOW_RETRY))
    assert first_retry(queue)
    assert queued_ids(queue) == ids  # nothing deleted on an answer that acknowledges nothing
    assert uplink.stats().delivered == 0
    assert backoffice.wait_for(10, 10)  # retried, then acknowledged properly
    assert wait_until(lambda: drained(queue), 5)
    first, second = backoffice.requests[:2]
    assert (first.taps, second.taps) == (10, 10)
    assert second.idempotency_key == first.idempotency_key  # the same rows went again
    assert uplink.stats().delivered == 10 and uplink.stats().failures == 1


def test_a_partial_acceptance_acks_only_the_named_taps(
    queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    backoffice.misbehave(Fault(accept=lambda ids: ids[::2]))
    ids = fill(queue, 10)
    uplink = run(uplinks, queue, settings_for(backoffice.url, **SLOW_RETRY))
    assert first_retry(queue)
    assert queued_ids(queue) == ids[1::2]
    assert uplink.stats().delivered == 5
    assert backoffice.wait_for(10, 10)
    assert wait_until(lambda: drained(queue), 5)
    assert [r.taps for r in backoffice.requests[:2]] == [10, 5]
    assert backoffice.duplicates == 0
    assert uplink.stats().delivered == 10


def test_already_known_taps_named_again_count_as_accepted(
    queue: TapQueue, backoffice: BackOfficeServer, uplinks: list[HttpUplink]
) -> None:
    backoffice.misbehave(Fault(status=503, record=True))  # stored, answer lost
    fill(queue, 10)
    uplink = run(uplinks, queue, settings_for(backoffice.url))
    assert wait_until(lambda: drained(queue), 10)
    assert backoffice.duplicates == 10 and len(backoffice.taps) == 10
    assert uplink.stats().delivered == 10


def test_the_answer_is_checked_against_the_batch(queue: TapQueue, backoffice: BackOfficeServer) -> None:
    fill(queue, 4)
    taps = queue.batch(4)
    uplink = HttpUplink(queue, settings_for(backoffice.url))
    try:
        backoffice.misbehave(
            Fault(body=b"not json"),
            Fault(body=b'["0000-0000000000"]'),
            Fault(body=b'{"accepted": [0, 1, 2, 3]}'),
            Fault(accept=lambda ids: [*ids, "0000-0000000099"]),
            Fault(accept=lambda ids: ids[1:]),
            Fault(accept=lambda ids: list(reversed(ids))),
        )
        outcomes = [uplink.post(taps) for _ in range(6)]
    finally:
        uplink.stop()
    assert [o.verdict for o in outcomes] == [
        Verdict.RETRY,
        Verdict.RETRY,
        Verdict.RETRY,
        Verdict.RETRY,
        Verdict.PARTIAL,
        Verdict.DELIVERED,
    ]
    assert outcomes[4].accepted == frozenset(tap.tap_id for tap in taps[1:])
    assert outcomes[5].accepted == frozenset(tap.tap_id for tap in taps)
    assert all(o.accepted == frozenset() for o in outcomes[:4])
