"""A back office on loopback: accepts tap batches, deduplicates by tap id, and misbehaves on request.

    server = BackOfficeServer()           # or tls=ServerTls(...), hmac_key=b"..."
    server.start()
    server.misbehave(Fault(status=500), Fault(status=429, headers={"Retry-After": "1"}))
    ... POST batches to server.url ...
    server.taps                           # {(terminal_id, tap_id): record}, one per tap
    server.stop()

Each queued Fault is used by one POST, in order; with none queued a batch is accepted and
the answer names what was accepted, `{"accepted": [tap_id, ...], "new": n}`: every tap of
the batch, those it already had included (a resent batch is acknowledged again).
The server also checks what a real ingest would: an Idempotency-Key (a structured-header
string) on every batch and never reused for a different body (422), an HMAC signature when
given a key (401), and taps it is told to refuse (`refuse=` predicate, 422). It serves a
hotlist document at `hotlist_url` with ETag / If-None-Match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

Record = dict[str, Any]


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one POST.

    status: answer this status instead of 200; record: store the taps anyway (the answer is
    lost, not the work); delay_s: wait before answering; reset: "before" resets the
    connection without storing, "after" stores then resets.

    What a captive portal or a broken proxy does: body: answer these bytes (with
    `content_type`, status 200 unless `status` says otherwise) and store nothing.
    What a back office that takes part of a batch does: accept: given the batch's tap ids,
    the ids the answer names; the named ids that are in the batch are stored, the others
    are named anyway (a wrong answer), the rest of the batch is not stored.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    record: bool = False
    delay_s: float = 0.0
    reset: Literal["before", "after"] | None = None
    body: bytes | None = None
    content_type: str = "application/json"
    accept: Callable[[list[str]], list[str]] | None = None


@dataclass(frozen=True)
class ServerTls:
    """Server certificate, and the CA that client certificates must chain to (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class RequestLog:
    """What one POST looked like and how it was answered."""

    at: float
    status: int | None
    idempotency_key: str | None
    taps: int
    fault: Fault | None


class BackOfficeServer:
    """Threaded HTTP(S) server on loopback; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ServerTls | None = None,
        hmac_key: bytes | None = None,
        signature_header: str = "X-Signature",
        refuse: Callable[[Record], bool] | None = None,
    ) -> None:
        self.taps: dict[tuple[str, str], Record] = {}
        self.received = 0
        self.requests: list[RequestLog] = []
        self.tls_failures: list[str] = []
        self.handler_errors: list[str] = []
        self.hmac_key = hmac_key
        self.signature_header = signature_header
        self.refuse = refuse
        self._faults: list[Fault] = []
        self._keys: dict[str, str] = {}
        self._hotlist: tuple[bytes, str] | None = None
        self.hotlist_requests = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tls_context = _server_context(tls) if tls is not None else None
        self._httpd = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None
        self.scheme = "https" if tls is not None else "http"
        self.host = host
        self.port: int = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Where to POST tap batches."""
        return f"{self.scheme}://{'localhost' if self._tls_context else self.host}:{self.port}/taps"

    @property
    def hotlist_url(self) -> str:
        """Where to GET the hotlist document."""
        return f"{self.scheme}://{'localhost' if self._tls_context else self.host}:{self.port}/hotlist"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="backoffice", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> BackOfficeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------------------

    def misbehave(self, *faults: Fault) -> None:
        """Queue faults; each one is used by the next POST."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        """Faults not yet used."""
        with self._lock:
            return len(self._faults)

    def set_hotlist(self, document: bytes, etag: str) -> None:
        """Serve this hotlist document with this ETag."""
        with self._lock:
            self._hotlist = (document, etag)

    @property
    def duplicates(self) -> int:
        """Tap deliveries beyond the first per tap id."""
        with self._lock:
            return self.received - len(self.taps)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until `count` distinct taps are stored; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.taps) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    # -- request handling (called from handler threads) ----------------------------------

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _store(self, taps: list[Record]) -> int:
        with self._changed:
            fresh = 0
            for record in taps:
                key = (str(record["terminal_id"]), str(record["tap_id"]))
                self.received += 1
                if key not in self.taps:
                    self.taps[key] = record
                    fresh += 1
            self._changed.notify_all()
            return fresh

    def _log(self, entry: RequestLog) -> None:
        with self._lock:
            self.requests.append(entry)

    def _check_key(self, key: str, body: bytes) -> bool:
        """False when the key was used before with a different body."""
        fingerprint = hashlib.sha256(body).hexdigest()
        with self._lock:
            known = self._keys.setdefault(key, fingerprint)
        return known == fingerprint


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: BackOfficeServer):
        self.owner = owner
        self.to_reset: set[int] = set()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.owner._tls_context
        if context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls_request = context.wrap_socket(request, server_side=True)
        except OSError as exc:  # handshake refused: no or untrusted client certificate
            self.owner.tls_failures.append(repr(exc))
            return
        try:
            super().finish_request(tls_request, client_address)
        finally:
            self.to_reset.discard(id(tls_request))
            tls_request.close()

    def shutdown_request(self, request: Any) -> None:
        if id(request) in self.to_reset:
            # No FIN first: closing with SO_LINGER 0 sends the RST.
            self.to_reset.discard(id(request))
            self.close_request(request)
            return
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.handler_errors.append(repr(sys.exc_info()[1]))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, each answer waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test inspects `requests` instead of a log."""

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0 then close)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.server.to_reset.add(id(self.connection))

    def _answer(self, status: int, payload: Record | None = None, headers: dict[str, str] | None = None) -> None:
        self._answer_raw(status, json.dumps(payload or {}).encode(), "application/json", headers)

    def _answer_raw(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path != "/hotlist":
            self._answer(404, {"error": "not found"})
            return
        with owner._lock:
            owner.hotlist_requests += 1
            current = owner._hotlist
        if current is None:
            self._answer(404, {"error": "no hotlist"})
            return
        document, etag = current
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(document)))
        self.end_headers()
        self.wfile.write(document)

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        fault = owner._next_fault()
        raw_key = self.headers.get("Idempotency-Key")
        key = raw_key[1:-1] if raw_key and len(raw_key) >= 2 and raw_key[0] == raw_key[-1] == '"' else None

        def log(status: int | None, taps: int) -> None:
            owner._log(RequestLog(time.time(), status, key, taps, fault))

        if self.path != "/taps":
            log(404, 0)
            self._answer(404, {"error": "not found"})
            return
        if fault is not None and fault.reset == "before":
            log(None, 0)
            self._reset()
            return
        if key is None:
            log(400, 0)
            self._answer(400, {"error": "Idempotency-Key missing or not a structured string"})
            return
        if owner.hmac_key is not None:
            expected = "sha256=" + hmac.new(owner.hmac_key, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers.get(owner.signature_header, "")):
                log(401, 0)
                self._answer(401, {"error": "bad signature"})
                return
        try:
            taps = json.loads(body)["taps"]
            if not isinstance(taps, list) or not all("tap_id" in t and "terminal_id" in t for t in taps):
                raise ValueError("taps must be records with tap_id and terminal_id")
        except (ValueError, KeyError, TypeError) as exc:
            log(400, 0)
            self._answer(400, {"error": f"bad batch: {exc}"})
            return
        if not owner._check_key(key, body):
            log(422, len(taps))
            self._answer(422, {"error": "Idempotency-Key reused with a different body"})
            return
        if owner.refuse is not None:
            refused = [t["tap_id"] for t in taps if owner.refuse(t)]
            if refused:
                log(422, len(taps))
                self._answer(422, {"error": "refused", "tap_ids": refused})
                return
        if fault is not None and fault.reset == "after":
            owner._store(taps)
            log(None, len(taps))
            self._reset()
            return
        if fault is not None and fault.body is not None:
            status = fault.status if fault.status is not None else 200
            log(status, len(taps))
            self._answer_raw(status, fault.body, fault.content_type, fault.headers)
            return
        if fault is not None and fault.accept is not None:
            named = fault.accept([str(t["tap_id"]) for t in taps])
            fresh = owner._store([t for t in taps if str(t["tap_id"]) in set(named)])
            log(200, len(taps))
            self._answer(200, {"accepted": named, "new": fresh})
            return
        if fault is not None and fault.status is not None:
            if fault.record:
                owner._store(taps)
            if fault.delay_s:
                time.sleep(fault.delay_s)
            log(fault.status, len(taps))
            self._answer(fault.status, {"error": "scripted"}, fault.headers)
            return
        fresh = owner._store(taps)
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        log(200, len(taps))
        self._answer(200, {"accepted": [str(t["tap_id"]) for t in taps], "new": fresh})


def _server_context(tls: ServerTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.client_ca is not None:
        ctx.load_verify_locations(str(tls.client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
