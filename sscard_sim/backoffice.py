"""A back office on loopback that takes tap batches from the HTTP uplink, for the demo.

It speaks the uplink's side of the protocol (reader/uplink/http_uplink.py) and nothing
more, so the demo's taps really leave the terminal over HTTP and are acknowledged:

- `POST /taps` with the body `{"taps": [record, ...]}`;
- an `Idempotency-Key` header that is a structured-header string (`"<hex>"`), never reused
  for a different body (422 otherwise);
- with a key, an HMAC-SHA256 signature of the exact body bytes (`sha256=<hex>`, 401 if wrong);
- the answer to a good batch is 200 with `{"accepted": [tap ids of the batch, in order]}`:
  a tap already held is accepted again (the uplink retries after a lost answer), and is
  kept once, by (terminal id, tap id).

It keeps the records in memory and counts them; it lives in the product (not the test
suite) because `sscard demo` runs from an installed wheel.

    with BackOffice(hmac_key=key) as office:
        ... point [uplink.http] url at office.url ...
        office.wait_for(10, timeout=5.0)
        office.records()
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reader.log import get_logger

Record = dict[str, Any]

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Larger bodies are refused (413): the uplink's batches are far smaller (batch_max_bytes)."""

log = get_logger(component="backoffice")


class BatchRefused(ValueError):
    """A POST the back office does not take: carries the HTTP status and the reason given."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class BackOffice:
    """Threaded HTTP server on loopback holding the taps it was sent; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hmac_key: bytes | None = None,
        signature_header: str = "X-Signature",
    ) -> None:
        self.hmac_key = hmac_key
        self.signature_header = signature_header
        self.batches = 0
        """Batches accepted (200)."""
        self.received = 0
        """Tap records received in accepted batches, duplicates included."""
        self.refused = 0
        """POSTs answered with an error status."""
        self._taps: dict[tuple[str, str], Record] = {}
        self._keys: dict[str, str] = {}
        self._changed = threading.Condition()
        self._httpd = _Server((host, port), self)
        self._thread: threading.Thread | None = None
        self.host = host
        self.port: int = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Where the uplink POSTs its batches."""
        return f"http://{self.host}:{self.port}/taps"

    def start(self) -> None:
        """Serve from a background thread."""
        # A short poll interval: stop() waits for the serving loop to look, and the demo waits on stop().
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="backoffice", daemon=True
        )
        self._thread.start()
        log.info("backoffice_listening", url=self.url)

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> BackOffice:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what arrived

    def count(self, terminal_id: str | None = None) -> int:
        """Distinct taps held, of one terminal or of all."""
        with self._changed:
            if terminal_id is None:
                return len(self._taps)
            return sum(terminal == terminal_id for terminal, _ in self._taps)

    def records(self) -> list[Record]:
        """The distinct tap records held, in the order they first arrived."""
        with self._changed:
            return list(self._taps.values())

    def holds(self, terminal_id: str, tap_id: str) -> bool:
        """Whether this tap has been received."""
        with self._changed:
            return (terminal_id, tap_id) in self._taps

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until `count` distinct taps are held; False when `timeout` passes first."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._taps) >= count, timeout)

    # ------------------------------------------------------------------ one POST

    def take(self, idempotency_key: str | None, signature: str | None, body: bytes) -> list[str]:
        """Check and store one batch; the tap ids accepted, or BatchRefused with the status to answer."""
        key = _structured_string(idempotency_key)
        if key is None:
            raise BatchRefused(400, "Idempotency-Key missing or not a structured-header string")
        if self.hmac_key is not None:
            expected = "sha256=" + hmac.new(self.hmac_key, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, signature or ""):
                raise BatchRefused(401, "bad or missing signature")
        taps = _batch(body)
        fingerprint = hashlib.sha256(body).hexdigest()
        with self._changed:
            if self._keys.setdefault(key, fingerprint) != fingerprint:
                raise BatchRefused(422, "Idempotency-Key reused with a different body")
            fresh = 0
            for record in taps:
                slot = (str(record["terminal_id"]), str(record["tap_id"]))
                if slot not in self._taps:
                    self._taps[slot] = record
                    fresh += 1
            self.batches += 1
            self.received += len(taps)
            self._changed.notify_all()
        log.info("backoffice_batch_accepted", taps=len(taps), new=fresh)
        return [str(record["tap_id"]) for record in taps]

    def _note_refused(self, error: BatchRefused) -> None:
        with self._changed:
            self.refused += 1
        log.warning("backoffice_batch_refused", status=error.status, reason=error.reason)


def _structured_string(value: str | None) -> str | None:
    """The content of an RFC 8941 string (`"..."`), or None when the header is not one."""
    if value is None or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return None
    inner = value[1:-1]
    return inner if inner and '"' not in inner and "\\" not in inner else None


def _batch(body: bytes) -> list[Record]:
    """The tap records of a body, each with a tap id and a terminal id."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchRefused(400, f"body is not JSON: {exc}") from exc
    taps = document.get("taps") if isinstance(document, dict) else None
    if not isinstance(taps, list):
        raise BatchRefused(400, 'body must be {"taps": [record, ...]}')
    for record in taps:
        if not isinstance(record, dict) or not record.get("tap_id") or not record.get("terminal_id"):
            raise BatchRefused(400, "every tap needs a tap_id and a terminal_id")
    return taps


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: BackOffice) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke mid-request is logged, not printed over the demo's table."""
        log.warning("backoffice_connection_failed", client=str(client_address))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, each answer waits for a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged through structlog by the owner, not on stderr."""

    def _answer(self, status: int, payload: Record) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        owner = self.server.owner
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._answer(411, {"error": "Content-Length required"})
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        if self.path != "/taps":
            self._answer(404, {"error": "not found"})
            return
        try:
            accepted = owner.take(self.headers.get("Idempotency-Key"), self.headers.get(owner.signature_header), body)
        except BatchRefused as error:
            owner._note_refused(error)
            self._answer(error.status, {"error": error.reason})
            return
        self._answer(200, {"accepted": accepted})
