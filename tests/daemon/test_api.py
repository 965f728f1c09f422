"""The local API over real sockets: loopback TCP and a unix socket, httpx and raw sockets as clients.

Besides the resources themselves, what a misbehaving or hostile local client can do: hold
connections open without a request, send a huge body, send NaN, hang up mid-request, or
wait for a card alongside another client.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import referencing
from openapi_spec_validator import validate as validate_openapi

from reader.daemon.api import OPENAPI_DOCUMENT, ApiContext, ApiLimits, LocalApi
from reader.daemon.events import CardRequests, EventHub
from reader.log import configure_logging
from tests.daemon.bench import LogBuffer

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUS = {"terminal": "T1", "profile": "pharmacy", "healthy": True, "uptime_s": 1.0, "readers": [], "queue": {
    "depth": 0, "oldest_age_s": None}, "uplinks": {}, "hotlist_version": None, "pending_debits": 0, "psam": None}
HOLDER_A = {"tap_id": "a", "result": "accepted", "reason": "ok", "social_security_number": "510100199001010011"}
HOLDER_B = {"tap_id": "b", "result": "accepted", "reason": "ok", "social_security_number": "500100198502020022"}


def serve(listen: str = "127.0.0.1:0", limits: ApiLimits | None = None) -> LocalApi:
    server = LocalApi(listen, ApiContext(TOKEN, lambda: STATUS, EventHub(), CardRequests()), limits)
    server.start()
    return server


@pytest.fixture
def api() -> Iterator[tuple[LocalApi, httpx.Client]]:
    server = serve()
    client = httpx.Client(base_url=f"http://{server.address}", headers=AUTH, timeout=10)
    yield server, client
    client.close()
    server.stop()


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def port_of(server: LocalApi) -> int:
    return int(server.address.rpartition(":")[2])


def schema_validator(name: str) -> jsonschema.protocols.Validator:
    """A validator of one component schema of the served OpenAPI document (JSON Schema 2020-12)."""
    document = json.loads(OPENAPI_DOCUMENT)
    resource = referencing.Resource.from_contents(document, default_specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource("urn:sscard-api", resource)
    schema = {"$ref": f"urn:sscard-api#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


# --------------------------------------------------------------------------- resources


def test_status_needs_the_token(api: tuple[LocalApi, httpx.Client]) -> None:
    server, client = api
    answer = client.get("/v1/status").json()
    assert {key: answer[key] for key in STATUS} == STATUS
    assert answer["taps"]["total"] == 0
    schema_validator("Status").validate(answer)
    assert httpx.get(f"http://{server.address}/v1/status").status_code == 401
    wrong = httpx.get(f"http://{server.address}/v1/status", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics").status_code == 200
    assert httpx.get(f"http://{server.address}/metrics").status_code == 401


def test_paths_are_versioned(api: tuple[LocalApi, httpx.Client]) -> None:
    _, client = api
    old = client.get("/status")
    assert old.status_code == 404 and "/v1/status" in old.json()["error"]
    wrong_method = client.get("/v1/read-card")
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"


def test_openapi_document_is_served_and_valid(api: tuple[LocalApi, httpx.Client]) -> None:
    server, _ = api
    served = httpx.get(f"http://{server.address}/v1/openapi.json")
    assert served.status_code == 200
    checked_in = Path(__file__).resolve().parents[2] / "reader" / "daemon" / "openapi.json"
    assert served.content == checked_in.read_bytes()
    document = served.json()
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    assert {"/v1/status", "/v1/read-card", "/v1/events", "/metrics", "/v1/openapi.json", "/v1/page"} <= set(
        document["paths"]
    )
    answer = document["components"]["schemas"]["CardAnswer"]["properties"]
    assert {"card_identification_code", "card_number", "social_security_number", "name", "region", "card_token"} <= set(
        answer
    )


def test_read_card_answers_the_next_card(api: tuple[LocalApi, httpx.Client]) -> None:
    server, client = api
    requests = server.context.card_requests
    assert requests is not None
    offered = threading.Event()

    def tap_when_asked() -> None:
        assert wait_until(lambda: requests.waiting)
        offered.set()
        assert requests.offer(HOLDER_A)

    threading.Thread(target=tap_when_asked).start()
    answer = client.post("/v1/read-card", json={"timeout": 5})
    assert offered.is_set()
    assert answer.status_code == 200 and answer.json() == HOLDER_A
    schema_validator("CardAnswer").validate(answer.json())
    assert not requests.offer(HOLDER_A), "nobody waits any more: the identity is not kept"


def test_read_card_times_out(api: tuple[LocalApi, httpx.Client]) -> None:
    _, client = api
    started = time.monotonic()
    answer = client.post("/v1/read-card", json={"timeout": 0.3})
    assert answer.status_code == 504 and "error" in answer.json()
    assert 0.25 < time.monotonic() - started < 3


@pytest.mark.parametrize(
    "body",
    [
        b'{"timeout": NaN}',
        b'{"timeout": Infinity}',
        b'{"timeout": -Infinity}',
        b'{"timeout": 1e999}',
        b'{"timeout": -1}',
        b'{"timeout": 0}',
        b'{"timeout": 120.5}',
        b'{"timeout": "30"}',
        b'{"timeout": true}',
        b'{"timeout": null}',
        b'{"timeout": 5, "wait": 1}',
        b"[5]",
        b"not json",
        b"\xff\xfe",
    ],
)
def test_read_card_refuses_a_timeout_that_is_not_finite_and_bounded(
    api: tuple[LocalApi, httpx.Client], body: bytes
) -> None:
    server, client = api
    started = time.monotonic()
    answer = client.post("/v1/read-card", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"} and answer.json()["error"]
    assert time.monotonic() - started < 2, "a refused request must not wait for a card"
    assert server.context.card_requests is not None and not server.context.card_requests.waiting


def test_each_card_goes_to_one_request_only(api: tuple[LocalApi, httpx.Client]) -> None:
    """Two POS requests wait at once: the first card goes to the first asker, the second to the other."""
    server, client = api
    requests = server.context.card_requests
    assert requests is not None
    with ThreadPoolExecutor(max_workers=2) as pool:
        first: Future[httpx.Response] = pool.submit(client.post, "/v1/read-card", json={"timeout": 10})
        assert wait_until(lambda: requests.waiting_count == 1)
        second: Future[httpx.Response] = pool.submit(client.post, "/v1/read-card", json={"timeout": 10})
        assert wait_until(lambda: requests.waiting_count == 2)
        assert requests.offer(HOLDER_A)
        assert first.result(5).json() == HOLDER_A
        assert not second.done() or second.result().json() != HOLDER_A, "the second asker saw the first holder"
        assert requests.waiting_count == 1
        assert requests.offer(HOLDER_B)
        assert second.result(5).json() == HOLDER_B


def test_a_request_whose_client_hung_up_gets_no_card(api: tuple[LocalApi, httpx.Client]) -> None:
    server, client = api
    requests = server.context.card_requests
    assert requests is not None
    gone = socket.create_connection(("127.0.0.1", port_of(server)))
    body = b'{"timeout": 20}'
    gone.sendall(
        b"POST /v1/read-card HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert wait_until(lambda: requests.waiting_count == 1)
    gone.close()
    assert wait_until(lambda: not requests.waiting), "the hung-up request still waits for a card"
    with ThreadPoolExecutor(max_workers=1) as pool:
        live: Future[httpx.Response] = pool.submit(client.post, "/v1/read-card", json={"timeout": 10})
        assert wait_until(lambda: requests.waiting_count == 1)
        assert requests.offer(HOLDER_B)
        assert live.result(5).json() == HOLDER_B


def test_event_stream_delivers_committed_taps(api: tuple[LocalApi, httpx.Client]) -> None:
    server, client = api
    with client.stream("GET", "/v1/events") as stream:
        assert wait_until(lambda: server.context.events.subscribers == 1)
        server.context.events.publish({"tap_id": "0001", "result": "accepted"})
        for line in stream.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line.removeprefix("data: ")) == {"tap_id": "0001", "result": "accepted"}
                break
    assert wait_until(lambda: server.context.events.subscribers == 0), "the stream's subscription outlived it"


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    context = ApiContext(TOKEN, lambda: {"ok": True}, EventHub(), None)
    server = LocalApi(f"unix:{path}", context)
    server.start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://sscard", headers=AUTH) as client:
            assert client.get("/v1/status").json()["ok"] is True
            assert client.post("/v1/read-card", json={}).status_code == 409
    finally:
        server.stop()
    assert not path.exists()


# --------------------------------------------------------------------------- misbehaving clients


def test_slow_clients_are_closed_within_the_timeout_and_hold_no_thread() -> None:
    """Clients that open a connection and send half a request line hold no worker and are closed."""
    limits = ApiLimits(idle_timeout=1.0, cleanup_interval=0.25)
    server = serve(limits=limits)
    slow: list[socket.socket] = []
    try:
        threads_before = threading.active_count()
        for _ in range(40):
            connection = socket.create_connection(("127.0.0.1", port_of(server)))
            connection.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            connection.settimeout(5)
            slow.append(connection)
        # The slow ones hold no worker: a complete request is answered at once meanwhile.
        assert httpx.get(f"http://{server.address}/v1/status", headers=AUTH, timeout=2).status_code == 200
        assert threading.active_count() <= threads_before + 2
        started = time.monotonic()
        for connection in slow:
            assert connection.recv(1024) == b"", "a slow client got an answer or was not closed"
        assert time.monotonic() - started < limits.idle_timeout + limits.cleanup_interval + 1.5
    finally:
        for connection in slow:
            connection.close()
        server.stop()


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_an_oversized_body_is_refused_without_memory_growth(api: tuple[LocalApi, httpx.Client]) -> None:
    """A 64 MiB read-card body: refused with 413 from its Content-Length, and the server's peak memory stays put."""
    server, _ = api
    size = 64 * 1024 * 1024
    chunk = b"x" * (1024 * 1024)
    connection = socket.create_connection(("127.0.0.1", port_of(server)))
    connection.settimeout(20)
    head = (
        f"POST /v1/read-card HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()

    def send_body() -> None:
        try:
            for _ in range(size // len(chunk)):
                connection.sendall(chunk)
        except OSError:
            pass  # the server hung up on the body it refused: that is the point

    _peak_rss_reset()
    baseline = _peak_rss()
    connection.sendall(head)
    sender = threading.Thread(target=send_body)
    sender.start()
    answer = connection.recv(4096)
    sender.join(30)
    connection.close()
    growth = _peak_rss() - baseline
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert growth < 16 * 1024 * 1024, f"peak memory grew by {growth / 2**20:.0f} MiB"


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashed or was killed."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def test_clients_that_reset_leave_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """Resets mid-headers, mid-body, during a card wait and during a stream: at most single JSON log lines."""
    buffer = LogBuffer()
    restore = configure_logging(level="debug", stream=buffer)
    server = serve()
    try:
        port = port_of(server)
        requests = server.context.card_requests
        assert requests is not None
        authorised = f"Authorization: Bearer {TOKEN}\r\n".encode()
        half_headers = socket.create_connection(("127.0.0.1", port))
        half_headers.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        half_body = socket.create_connection(("127.0.0.1", port))
        half_body.sendall(b"POST /v1/read-card HTTP/1.1\r\nHost: x\r\n" + authorised + b"Content-Length: 100\r\n\r\n{")
        waiting = socket.create_connection(("127.0.0.1", port))
        waiting.sendall(b"POST /v1/read-card HTTP/1.1\r\nHost: x\r\n" + authorised + b"Content-Length: 0\r\n\r\n")
        streaming = socket.create_connection(("127.0.0.1", port))
        streaming.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n" + authorised + b"\r\n")
        streaming.settimeout(5)
        assert streaming.recv(4096).startswith(b"HTTP/1.1 200")
        assert wait_until(lambda: requests.waiting and server.context.events.subscribers == 1)
        for connection in (half_headers, half_body, waiting, streaming):
            _reset(connection)
        assert wait_until(lambda: not requests.waiting and server.context.events.subscribers == 0)
        assert httpx.get(f"http://{server.address}/v1/status", headers=AUTH).status_code == 200
    finally:
        server.stop()
        restore()  # the package's capture (tap_logs) goes on for the tests after this one
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = buffer.events()
    assert lines, "the API logged nothing at debug level"
    for line in lines:
        assert "exception" not in line and "Traceback" not in json.dumps(line), line
