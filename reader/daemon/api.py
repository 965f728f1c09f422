"""The local API for POS software, gate controllers and the depot: loopback TCP or a unix socket.

A WSGI application served by waitress. Waitress reads requests in its event loop and hands
only complete ones to its worker threads, so a slow or silent client holds a file descriptor,
never a thread; it closes connections idle for `ApiLimits.idle_timeout`, refuses bodies over
`ApiLimits.max_body` from the Content-Length alone (413, nothing read), caps open
connections, and binds unix sockets with mode 0600.

Every data resource needs `Authorization: Bearer <token>` (the token comes from a file or a
systemd credential). The paths are versioned; the contract is `openapi.json` beside this
module, served at `/v1/openapi.json`:
- `GET /v1/status`: the daemon's status (readers, PSAM, queue, uplinks, hotlist) and tap figures;
- `POST /v1/read-card` with `{"timeout": seconds}`: waits for the next card on a pharmacy
  terminal and answers, to that request alone, what settlement needs to identify the card
  and its holder (the only way personal data leaves the daemon; it is never logged nor queued);
- `PUT /v1/canteen/price` with `{"amount": fen, "expires_in": seconds}`: on a canteen terminal,
  the price of the next meal, for the next tap served within the expiry; `GET` shows the price
  in force, `DELETE` withdraws it (the order was cancelled);
- `GET /v1/events`: a server-sent-events stream of tap records as they are committed;
- `GET /metrics`: the Prometheus exposition;
- `GET /v1/page`: the depot status page (no data in it; its script polls `/v1/status` with
  the token the technician gives it).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from reader.daemon.events import CardRequests, EventHub, TooManyCardRequests
from reader.daemon.meal_price import MAX_PRICE, CanteenRequests, MealPrice, MealPrices
from reader.daemon.metrics import CONTENT_TYPE, render_metrics
from reader.daemon.status_page import PAGE_FILES
from reader.daemon.tap_stats import TapStats
from reader.log import get_logger

log = get_logger(component="api")

MAX_READ_TIMEOUT = 120.0
"""The longest a read-card request may wait: a POS that wants longer asks again."""
DEFAULT_READ_TIMEOUT = 30.0

OPENAPI_DOCUMENT: bytes = resources.files("reader.daemon").joinpath("openapi.json").read_bytes()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]


@dataclass(frozen=True)
class ApiLimits:
    """What one client may take of the server.

    `threads` bounds the requests served at once; long requests (an event stream, a waiting
    read-card) are capped below it (`event_streams`, `card_requests`) so that status, metrics
    and the page always find a free thread.
    """

    idle_timeout: float = 10.0
    """A connection with no request in progress and no bytes for this long is closed."""
    cleanup_interval: float = 1.0
    """How often idle connections are looked for (the timeout is met within this much)."""
    max_body: int = 16 * 1024
    max_header: int = 8 * 1024
    connection_limit: int = 64
    threads: int = 8
    event_streams: int = 2
    card_requests: int = 4


class ApiContext:
    """What the handlers need from the daemon, and nothing else.

    The tap statistics observe `events` from construction on, so the page and the metrics
    count every record committed while the API exists.
    """

    def __init__(
        self,
        token: str,
        status: Callable[[], Mapping[str, Any]],
        events: EventHub,
        card_requests: CardRequests | None,
        taps: TapStats | None = None,
        prices: MealPrices | None = None,
    ) -> None:
        self.token = token
        self.status = status
        self.events = events
        self.card_requests = card_requests
        if prices is None and isinstance(card_requests, CanteenRequests):
            prices = card_requests.prices
        self.prices = prices
        """The canteen's price of the next meal; None on every other terminal kind."""
        self.taps = taps or TapStats()
        events.observe(self.taps.observe)
        self.stopping = threading.Event()


class BadRequest(ValueError):
    """A request body the API refuses, with the reason the client is told."""


def _refuse_constant(name: str) -> float:
    raise BadRequest(f"timeout must be a finite number of seconds, not {name}")


def parse_read_card(body: bytes) -> float:
    """The timeout of a read-card request: a finite number of seconds in (0, MAX_READ_TIMEOUT]."""
    if not body.strip():
        return DEFAULT_READ_TIMEOUT
    try:
        document = json.loads(body, parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise BadRequest("the body is not UTF-8") from error
    except json.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error.msg} at {error.pos}") from error
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(document) - {"timeout"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    timeout = document.get("timeout", DEFAULT_READ_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise BadRequest("timeout must be a number of seconds")
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_READ_TIMEOUT:
        raise BadRequest(f"timeout must be finite, above 0 and at most {MAX_READ_TIMEOUT:g} seconds")
    return float(timeout)


def parse_meal_price(body: bytes) -> tuple[int, float | None]:
    """The amount (fen) and optional expiry (seconds) of a canteen price request."""
    try:
        document = json.loads(body, parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise BadRequest("the body is not UTF-8") from error
    except json.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error.msg} at {error.pos}") from error
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(document) - {"amount", "expires_in"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    amount = document.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_PRICE:
        raise BadRequest(f"amount must be a whole number of fen, 1 to {MAX_PRICE}")
    expires_in = document.get("expires_in")
    if expires_in is None:
        return amount, None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise BadRequest("expires_in must be a number of seconds")
    if not math.isfinite(expires_in) or not expires_in > 0:
        raise BadRequest("expires_in must be finite and above 0 seconds")
    return amount, float(expires_in)


class _Response:
    """Status, headers and body of one answer."""

    def __init__(
        self,
        status: HTTPStatus,
        body: bytes | Iterable[bytes],
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.headers = [("Content-Type", content_type), ("Cache-Control", "no-store"), *headers]
        if isinstance(body, bytes):
            self.headers.append(("Content-Length", str(len(body))))


def _json(status: HTTPStatus, body: Mapping[str, Any], headers: Iterable[tuple[str, str]] = ()) -> _Response:
    return _Response(status, json.dumps(body, ensure_ascii=False).encode(), headers=headers)


def _error(status: HTTPStatus, message: str, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    return _json(status, {"error": message}, headers)


Handler = Callable[[Environ], _Response]

PAGE_SECURITY = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)


class ApiApplication:
    """The WSGI application: routing, the bearer token, and the resources."""

    def __init__(self, context: ApiContext, limits: ApiLimits) -> None:
        self.context = context
        self.limits = limits
        self._streams = threading.BoundedSemaphore(limits.event_streams)
        self._routes: dict[str, dict[str, tuple[Handler, bool]]] = {
            "/v1/status": {"GET": (self._status, True)},
            "/v1/read-card": {"POST": (self._read_card, True)},
            "/v1/events": {"GET": (self._events, True)},
            "/v1/canteen/price": {
                "GET": (self._meal_price, True),
                "PUT": (self._set_meal_price, True),
                "DELETE": (self._withdraw_meal_price, True),
            },
            "/metrics": {"GET": (self._metrics, True)},
            "/v1/openapi.json": {"GET": (self._openapi, False)},
            "/": {"GET": (self._root, False)},
            **{path: {"GET": (self._page_file, False)} for path in PAGE_FILES},
        }

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        response = self._dispatch(environ, path, method)
        log.debug("api_request", method=method, path=path, status=response.status.value)
        start_response(f"{response.status.value} {response.status.phrase}", response.headers)
        return [response.body] if isinstance(response.body, bytes) else response.body

    def _dispatch(self, environ: Environ, path: str, method: str) -> _Response:
        methods = self._routes.get(path)
        if methods is None:
            hint = f"; this API is versioned: /v1{path}" if path in ("/status", "/read-card", "/events") else ""
            return _error(HTTPStatus.NOT_FOUND, f"no resource {path}{hint}")
        if method not in methods:
            allowed = ", ".join(sorted(methods))
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {allowed}", [("Allow", allowed)])
        handler, needs_token = methods[method]
        if needs_token and not self._authorised(environ):
            return _error(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong bearer token",
                [("WWW-Authenticate", 'Bearer realm="sscard"')],
            )
        return handler(environ)

    def _authorised(self, environ: Environ) -> bool:
        offered = str(environ.get("HTTP_AUTHORIZATION", ""))
        expected = f"Bearer {self.context.token}"
        return hmac.compare_digest(offered.encode("utf-8", "replace"), expected.encode())

    def _abandoned(self, environ: Environ) -> Callable[[], bool]:
        """Whether to stop waiting for this request: its client hung up or the API is stopping."""
        disconnected: Callable[[], bool] = environ.get("waitress.client_disconnected", lambda: False)
        stopping = self.context.stopping
        return lambda: stopping.is_set() or disconnected()

    # ------------------------------------------------------------------ resources

    def _status(self, environ: Environ) -> _Response:
        requests = self.context.card_requests
        body = {
            **self.context.status(),
            "taps": self.context.taps.snapshot(),
            "api": {
                "event_streams": self.context.events.subscribers,
                "card_requests_waiting": requests.waiting_count if requests is not None else None,
            },
            "now": time.time(),
        }
        return _json(HTTPStatus.OK, body)

    def _read_card(self, environ: Environ) -> _Response:
        requests = self.context.card_requests
        if requests is None:
            return _error(HTTPStatus.CONFLICT, "this terminal does not serve card reads")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            timeout = parse_read_card(environ["wsgi.input"].read(length) if length > 0 else b"")
        except BadRequest as error:
            return _error(HTTPStatus.BAD_REQUEST, str(error))
        except ValueError:
            return _error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        try:
            answer = requests.wait_for_card(timeout, self._abandoned(environ))
        except TooManyCardRequests as error:
            return _error(HTTPStatus.TOO_MANY_REQUESTS, str(error))
        if answer is not None:
            return _json(HTTPStatus.OK, answer)
        if self.context.stopping.is_set():
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the terminal is stopping")
        return _error(HTTPStatus.GATEWAY_TIMEOUT, f"no card within {timeout:g} s")

    def _meal_price(self, environ: Environ) -> _Response:
        prices = self.context.prices
        if prices is None:
            return _error(HTTPStatus.CONFLICT, "this terminal is not a canteen")
        return _json(HTTPStatus.OK, _price_body(prices.current(), prices.longest))

    def _set_meal_price(self, environ: Environ) -> _Response:
        prices = self.context.prices
        if prices is None:
            return _error(HTTPStatus.CONFLICT, "this terminal is not a canteen")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            amount, expires_in = parse_meal_price(environ["wsgi.input"].read(length) if length > 0 else b"")
        except BadRequest as error:
            return _error(HTTPStatus.BAD_REQUEST, str(error))
        except ValueError:
            return _error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        price = prices.set(amount, expires_in)
        log.info("api_meal_price_set", amount=amount, expires_in_s=round(price.expires_in, 1))
        return _json(HTTPStatus.OK, _price_body(price, prices.longest))

    def _withdraw_meal_price(self, environ: Environ) -> _Response:
        prices = self.context.prices
        if prices is None:
            return _error(HTTPStatus.CONFLICT, "this terminal is not a canteen")
        withdrawn = prices.withdraw()
        return _json(HTTPStatus.OK, {**_price_body(None, prices.longest), "withdrawn": withdrawn})

    def _events(self, environ: Environ) -> _Response:
        if not self._streams.acquire(blocking=False):
            return _error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"at most {self.limits.event_streams} event streams at once",
                [("Retry-After", "5")],
            )
        return _Response(HTTPStatus.OK, self._stream(self._abandoned(environ)), "text/event-stream")

    def _stream(self, abandoned: Callable[[], bool]) -> Iterator[bytes]:
        """Tap records as `event: tap` messages, a comment after each idle second (a dead client shows)."""
        subscription = self.context.events.subscribe()
        try:
            yield b": connected\n\n"
            while not abandoned() and not subscription.closed.is_set():
                event = subscription.get(timeout=1.0)
                yield (f"event: tap\ndata: {json.dumps(event)}\n\n" if event else ": keep-alive\n\n").encode()
        finally:
            self.context.events.unsubscribe(subscription)
            self._streams.release()
            log.info("api_event_listener_left")

    def _metrics(self, environ: Environ) -> _Response:
        return _Response(HTTPStatus.OK, render_metrics(self.context.status(), self.context.taps), CONTENT_TYPE)

    def _openapi(self, environ: Environ) -> _Response:
        return _Response(HTTPStatus.OK, OPENAPI_DOCUMENT)

    def _root(self, environ: Environ) -> _Response:
        return _Response(HTTPStatus.SEE_OTHER, b"", "text/plain", [("Location", "/v1/page")])

    def _page_file(self, environ: Environ) -> _Response:
        content_type, body = PAGE_FILES[environ["PATH_INFO"]]
        return _Response(HTTPStatus.OK, body, content_type, PAGE_SECURITY)


def _price_body(price: MealPrice | None, longest: float) -> dict[str, Any]:
    return {
        "amount": price.amount if price else None,
        "expires_in": round(price.expires_in, 3) if price else None,
        "longest": longest,
    }


class _ServerLog(logging.Handler):
    """Waitress's own log records as one structlog line each (a traceback, if any, inside the line)."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "debug"
        getattr(log, level)("api_server", message=record.getMessage()[:300], exc_info=record.exc_info or None)


def _route_server_logs() -> None:
    logger = logging.getLogger("waitress")
    if not any(isinstance(handler, _ServerLog) for handler in logger.handlers):
        logger.addHandler(_ServerLog())
    logger.setLevel(logging.INFO)
    logger.propagate = False


class LocalApi:
    """The API server in a thread: `listen` is "HOST:PORT" or "unix:/path/to/socket"."""

    def __init__(self, listen: str, context: ApiContext, limits: ApiLimits | None = None) -> None:
        self.context = context
        self.listen = listen
        self.limits = limits = limits or ApiLimits()
        _route_server_logs()
        settings: dict[str, Any] = {
            "threads": limits.threads,
            "connection_limit": limits.connection_limit,
            "channel_timeout": limits.idle_timeout,
            "cleanup_interval": limits.cleanup_interval,
            "max_request_body_size": limits.max_body,
            "max_request_header_size": limits.max_header,
            "channel_request_lookahead": 1,
            "log_socket_errors": False,
            "expose_tracebacks": False,
            "asyncore_use_poll": True,
            "ident": "sscard",
        }
        self._socket_path: Path | None = None
        server: BaseWSGIServer | MultiSocketServer
        app = ApiApplication(context, limits)
        if listen.startswith("unix:"):
            self._socket_path = Path(listen.removeprefix("unix:"))
            old_umask = os.umask(0o177)
            try:
                server = create_server(app, unix_socket=str(self._socket_path), unix_socket_perms="600", **settings)
            finally:
                os.umask(old_umask)
        else:
            host, _, port = listen.rpartition(":")
            server = create_server(app, host=host.strip("[]") or "127.0.0.1", port=int(port), **settings)
        if not isinstance(server, BaseWSGIServer):
            raise TypeError(f"{listen} names more than one socket")
        self._server: BaseWSGIServer = server
        self._thread = threading.Thread(target=server.run, name="local-api", daemon=True)

    @property
    def address(self) -> str:
        """Where it listens (with the real port when 0 was asked for)."""
        if self._socket_path is not None:
            return f"unix:{self._socket_path}"
        host = self._server.effective_host
        return (
            f"[{host}]:{self._server.effective_port}" if ":" in str(host) else f"{host}:{self._server.effective_port}"
        )

    def start(self) -> None:
        self._thread.start()
        log.info(
            "api_listening",
            address=self.address,
            idle_timeout_s=self.limits.idle_timeout,
            max_body=self.limits.max_body,
        )

    def stop(self) -> None:
        """End waiting requests and streams, close every connection in the loop's own thread, join."""
        self.context.stopping.set()
        server = self._server
        if self._thread.is_alive():
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
            self._thread.join(5)
        else:
            wasyncore.close_all(server._map)
        server.task_dispatcher.shutdown(timeout=5)
        if self._socket_path is not None:
            self._socket_path.unlink(missing_ok=True)

    def alive(self) -> bool:
        return self._thread.is_alive()
