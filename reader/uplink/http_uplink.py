"""The HTTP uplink: batches of taps POSTed as JSON, one batch in flight at a time.

Request: `{"taps": [record, ...]}` in queue order, with
- `Idempotency-Key: "<hex>"` derived from the (terminal id, tap id) pairs of the batch, so
  the same rows always carry the same key, also after a restart; the tap ids inside let
  the back office deduplicate a batch that was cut differently;
- optionally `X-Signature: sha256=<hex>`, HMAC-SHA256 of the exact body bytes under the
  terminal's key (read from a file).

Answers:
- 200 with a JSON body `{"accepted": [tap_id, ...]}` naming every tap of the batch (in any
  order; taps the back office already had count as accepted): delivered, the rows are
  deleted. Naming only some of them acknowledges those: their rows are deleted, the
  others stay queued and are retried after a backoff.
- any other 2xx answer is no acknowledgement: an empty body, an HTML page (a captive
  portal, a misconfigured proxy), JSON without the list, a list naming none of the batch
  or naming a tap that is not in it (the answer is for some other request, so none of it
  is trusted). The batch stays queued and is retried after a backoff.
- 408, 409, 429, 5xx, no answer (timeout, reset, TLS failure): retried after a backoff with
  jitter, or after Retry-After on 429/503.
- any other 4xx: refused for good. A refused batch is halved until the refused tap is
  alone, and that tap is set aside as poison; the others go through. Nothing is retried
  forever and nothing is dropped.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import random
import sqlite3
import time
from dataclasses import dataclass

import httpx

from reader.backoff import Backoff, parse_retry_after
from reader.uplink.errors import UplinkConfigError
from reader.uplink.keys import read_key_file
from reader.uplink.queue import QueuedTap, TapQueue
from reader.uplink.settings import HttpUplinkSettings
from reader.uplink.tls import client_context
from reader.uplink.worker import UplinkWorker

_RETRYABLE_4XX = frozenset({408, 409, 429})
_RETRY_AFTER_STATUSES = frozenset({429, 503})


class Verdict(enum.Enum):
    """What one POST came to."""

    DELIVERED = "delivered"
    PARTIAL = "partial"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass(frozen=True)
class PostOutcome:
    """The verdict with its detail (status line or transport error) and any Retry-After delay.

    `accepted` holds the tap ids the back office named: all of the batch's for DELIVERED,
    some for PARTIAL, none otherwise.
    """

    verdict: Verdict
    detail: str
    retry_after_s: float | None = None
    accepted: frozenset[str] = frozenset()


class AckError(ValueError):
    """A 2xx answer that does not say which taps the back office accepted."""


def accepted_ids(body: bytes, batch_ids: frozenset[str]) -> frozenset[str]:
    """The tap ids a 2xx answer acknowledges, all of them within `batch_ids`.

    Raises AckError for an answer that is not `{"accepted": [tap_id, ...]}` or that names a
    tap outside the batch: such an answer belongs to no request of ours (a proxy, a
    mixed-up response) and acknowledges nothing.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AckError(f"answer is not JSON ({len(body)} bytes)") from exc
    named = document.get("accepted") if isinstance(document, dict) else None
    if not isinstance(named, list) or not all(isinstance(tap_id, str) for tap_id in named):
        raise AckError('answer has no "accepted" list of tap ids')
    ids = frozenset(named)
    strangers = ids - batch_ids
    if strangers:
        raise AckError(f"answer names {len(strangers)} tap(s) not in the batch")
    return ids


def idempotency_key(taps: list[QueuedTap]) -> str:
    """A key fixed by the batch's rows: the same rows always get the same key."""
    digest = hashlib.sha256()
    for tap in taps:
        digest.update(tap.terminal_id.encode())
        digest.update(b"\x1f")
        digest.update(tap.tap_id.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:32]


def batch_body(taps: list[QueuedTap]) -> bytes:
    """The JSON body, built from the stored record text without re-encoding it."""
    return ('{"taps":[' + ",".join(tap.body for tap in taps) + "]}").encode("utf-8")


def sign(key: bytes, body: bytes) -> str:
    """The signature header value for `body`."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class HttpUplink(UplinkWorker):
    """Drains a TapQueue to the back office over HTTP(S)."""

    def __init__(
        self,
        queue: TapQueue,
        settings: HttpUplinkSettings,
        *,
        rng: random.Random | None = None,
        name: str = "http_uplink",
    ) -> None:
        stall = settings.connect_timeout_s + settings.write_timeout_s + settings.read_timeout_s + 30.0
        super().__init__(name, stall_after_s=stall)
        if not settings.url:
            raise UplinkConfigError("the HTTP uplink has no url")
        self._url = settings.url
        self._queue = queue
        self._settings = settings
        self._backoff = Backoff.of(settings.backoff, rng)
        self._key = read_key_file(settings.hmac_key_file) if settings.hmac_key_file is not None else None
        # Plain http (a test bench, a local relay) has no TLS to verify; loading the CA store
        # for it would only slow the start. https always verifies unless settings say otherwise.
        verify = client_context(settings.tls) if self._url.startswith("https:") else False
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.write_timeout_s,
                pool=settings.connect_timeout_s,
            ),
            verify=verify,
            headers={"Content-Type": "application/json"},
        )

    def _wake(self) -> None:
        self._queue.wake()

    def _run(self) -> None:
        limit = self._settings.batch_size
        try:
            while not self.stopping:
                self._beat()
                try:
                    taps = self._queue.batch(limit, self._settings.batch_max_bytes)
                except sqlite3.Error as exc:
                    self._queue_trouble("queue_read_failed", exc)
                    continue
                if not taps:
                    limit = self._settings.batch_size
                    self._queue.wait_for_taps(self._settings.idle_poll_s)
                    continue
                outcome = self.post(taps)
                try:
                    limit = self._settle(taps, outcome, limit)
                except sqlite3.Error as exc:
                    self._queue_trouble("queue_write_failed", exc)
        finally:
            self._client.close()

    def _queue_trouble(self, event: str, exc: sqlite3.Error) -> None:
        self._note_error(f"{event}: {exc}")
        self._log.error(event, error=str(exc))
        self._sleep(self._backoff.next_delay())

    def _settle(self, taps: list[QueuedTap], outcome: PostOutcome, limit: int) -> int:
        """Apply the outcome to the queue; returns the batch size to use next."""
        seqs = [tap.seq for tap in taps]
        if outcome.verdict is Verdict.DELIVERED:
            acked = self._queue.ack(seqs)
            self._backoff.reset()
            self._note_delivered(acked)
            self._log.debug("batch_delivered", taps=len(taps), first=taps[0].tap_id, last=taps[-1].tap_id)
            return limit
        if outcome.verdict is Verdict.PARTIAL:
            # Only what the back office named leaves the queue; the rest waits like any failure.
            acked = self._queue.ack(tap.seq for tap in taps if tap.tap_id in outcome.accepted)
            self._note_delivered(acked)
            seqs = [tap.seq for tap in taps if tap.tap_id not in outcome.accepted]
        if outcome.verdict is Verdict.REFUSED:
            if len(taps) > 1:
                # Halve until the refused tap is alone; the rest of the batch still goes through.
                self._log.warning("batch_refused_splitting", taps=len(taps), detail=outcome.detail)
                self._note_error(f"refused: {outcome.detail}")
                return max(1, len(taps) // 2)
            moved = self._queue.set_aside(seqs, f"http {outcome.detail}")
            self._note_set_aside(moved)
            self._note_error(f"refused: {outcome.detail}")
            return self._settings.batch_size
        delay = outcome.retry_after_s if outcome.retry_after_s is not None else self._backoff.next_delay()
        self._note_error(outcome.detail)
        self._log.warning("batch_retry", taps=len(seqs), detail=outcome.detail, delay_s=round(delay, 3))
        self._queue.record_failure(seqs, outcome.detail)
        self._sleep(delay)
        return limit

    def post(self, taps: list[QueuedTap]) -> PostOutcome:
        """POST one batch and classify the answer (no retries here)."""
        body = batch_body(taps)
        headers = {"Idempotency-Key": f'"{idempotency_key(taps)}"'}
        if self._key is not None:
            headers[self._settings.signature_header] = sign(self._key, body)
        try:
            response = self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return PostOutcome(Verdict.RETRY, f"{type(exc).__name__}: {exc}")
        status = response.status_code
        detail = f"{status} {response.reason_phrase}".strip()
        if 200 <= status < 300:
            return self._acknowledgement(taps, response.content, detail)
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            snippet = response.text[:200].strip()
            return PostOutcome(Verdict.REFUSED, f"{detail}: {snippet}" if snippet else detail)
        retry_after = None
        if status in _RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), time.time(), self._settings.retry_after_max_s
            )
        return PostOutcome(Verdict.RETRY, detail, retry_after)

    @staticmethod
    def _acknowledgement(taps: list[QueuedTap], body: bytes, detail: str) -> PostOutcome:
        """Classify a 2xx answer by the taps it names; a 2xx alone acknowledges nothing."""
        batch_ids = frozenset(tap.tap_id for tap in taps)
        try:
            accepted = accepted_ids(body, batch_ids)
        except AckError as exc:
            return PostOutcome(Verdict.RETRY, f"{detail}: no acknowledgement: {exc}")
        if accepted == batch_ids:
            return PostOutcome(Verdict.DELIVERED, detail, accepted=accepted)
        if not accepted:
            return PostOutcome(Verdict.RETRY, f"{detail}: no acknowledgement: no tap of the batch named")
        missing = len(batch_ids) - len(accepted)
        return PostOutcome(Verdict.PARTIAL, f"{detail}: {missing} tap(s) not acknowledged", accepted=accepted)
