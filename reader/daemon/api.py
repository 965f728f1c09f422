"""The local API for POS software and gate controllers: loopback TCP or a unix socket.

Every request carries `Authorization: Bearer <token>` (the token comes from a file or a
systemd credential). Three resources:
- `GET /status`: the daemon's status (readers, queue, uplink, hotlist) as JSON;
- `POST /read-card` with `{"timeout": seconds}`: waits for the next card on a pharmacy
  terminal and answers the holder's identity for medical-insurance settlement (the only
  way personal data leaves the daemon; it is never logged nor queued);
- `GET /events`: a server-sent-events stream of tap records as they are committed.
"""

from __future__ import annotations

import hmac
import json
import os
import socketserver
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from reader.daemon.events import CardRequests, EventHub
from reader.log import get_logger

log = get_logger(component="api")

MAX_READ_TIMEOUT = 120.0


class ApiContext:
    """What the handlers need from the daemon, and nothing else."""

    def __init__(
        self,
        token: str,
        status: Callable[[], Mapping[str, Any]],
        events: EventHub,
        card_requests: CardRequests | None,
    ) -> None:
        self.token = token
        self.status = status
        self.events = events
        self.card_requests = card_requests
        self.stopping = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: _ApiServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api_request", line=format % args)

    def address_string(self) -> str:
        return "unix" if isinstance(self.client_address, (str, bytes)) else str(self.client_address[0])

    def _authorised(self) -> bool:
        offered = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.context.token}"
        if hmac.compare_digest(offered.encode(), expected.encode()):
            return True
        self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
        return False

    def _json(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path == "/status":
            self._json(HTTPStatus.OK, self.server.context.status())
        elif self.path == "/events":
            self._stream_events()
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no resource {self.path}"})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        if self.path != "/read-card":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no resource {self.path}"})
            return
        requests = self.server.context.card_requests
        if requests is None:
            self._json(HTTPStatus.CONFLICT, {"error": "this terminal does not serve card reads"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            timeout = min(float(body.get("timeout", 30)), MAX_READ_TIMEOUT)
        except (ValueError, TypeError, AttributeError) as error:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad request body: {error}"})
            return
        answer = requests.wait_for_card(timeout)
        if answer is None:
            self._json(HTTPStatus.GATEWAY_TIMEOUT, {"error": f"no card within {timeout} s"})
        else:
            self._json(HTTPStatus.OK, answer)

    def _stream_events(self) -> None:
        context = self.server.context
        subscription = context.events.subscribe()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            while not context.stopping.is_set() and not subscription.closed.is_set():
                event = subscription.get(timeout=1.0)
                chunk = f"event: tap\ndata: {json.dumps(event)}\n\n" if event else ": keep-alive\n\n"
                self.wfile.write(chunk.encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("api_event_listener_left")
        finally:
            context.events.unsubscribe(subscription)
        self.close_connection = True


class _ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ApiContext) -> None:
        self.context = context
        super().__init__(address, _Handler)


class _UnixApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, context: ApiContext) -> None:
        self.context = context
        super().__init__(path, _Handler)


class LocalApi:
    """The API server in a thread: `listen` is "HOST:PORT" or "unix:/path/to/socket"."""

    def __init__(self, listen: str, context: ApiContext) -> None:
        self.context = context
        self.listen = listen
        self._server: socketserver.BaseServer
        if listen.startswith("unix:"):
            path = Path(listen.removeprefix("unix:"))
            if path.is_socket():
                path.unlink()
            old_umask = os.umask(0o177)
            try:
                self._server = _UnixApiServer(str(path), context)
            finally:
                os.umask(old_umask)
        else:
            host, _, port = listen.rpartition(":")
            self._server = _ApiServer((host or "127.0.0.1", int(port)), context)
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-api", daemon=True)

    @property
    def address(self) -> str:
        """Where it listens (with the real port when 0 was asked for)."""
        server_address = self._server.server_address
        if isinstance(server_address, tuple):
            return f"{server_address[0]}:{server_address[1]}"
        return f"unix:{server_address!s}"

    def start(self) -> None:
        self._thread.start()
        log.info("api_listening", address=self.address)

    def stop(self) -> None:
        self.context.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if isinstance(self._server, _UnixApiServer):
            Path(str(self._server.server_address)).unlink(missing_ok=True)

    def alive(self) -> bool:
        return self._thread.is_alive()


