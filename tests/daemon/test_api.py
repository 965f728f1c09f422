"""The local API over real sockets: loopback TCP and a unix socket, with httpx as the client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reader.daemon.api import ApiContext, LocalApi
from reader.daemon.events import CardRequests, EventHub

TOKEN = "test-token-7f3a"


@pytest.fixture
def api() -> Iterator[tuple[LocalApi, httpx.Client]]:
    context = ApiContext(TOKEN, lambda: {"readers": {"r0": "alive"}}, EventHub(), CardRequests())
    server = LocalApi("127.0.0.1:0", context)
    server.start()
    client = httpx.Client(base_url=f"http://{server.address}", headers={"Authorization": f"Bearer {TOKEN}"})
    yield server, client
    client.close()
    server.stop()


def test_status_needs_the_token(api: tuple[LocalApi, httpx.Client]) -> None:
    server, client = api
    assert client.get("/status").json() == {"readers": {"r0": "alive"}}
    assert httpx.get(f"http://{server.address}/status").status_code == 401
    wrong = httpx.get(f"http://{server.address}/status", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_read_card_answers_the_next_card(api: tuple[LocalApi, httpx.Client]) -> None:
    server, client = api
    requests = server.context.card_requests
    assert requests is not None
    holder = {"social_security_number": "510100199001010011", "name": "测试"}
    offered = threading.Event()

    def tap_when_asked() -> None:
        while not requests.waiting:
            threading.Event().wait(0.01)
        offered.set()
        assert requests.offer(holder)

    threading.Thread(target=tap_when_asked).start()
    answer = client.post("/read-card", json={"timeout": 5})
    assert offered.is_set()
    assert answer.status_code == 200 and answer.json() == holder
    assert not requests.offer(holder), "nobody waits any more: the identity is not kept"


def test_read_card_times_out(api: tuple[LocalApi, httpx.Client]) -> None:
    _, client = api
    assert client.post("/read-card", json={"timeout": 0.2}).status_code == 504
    assert client.post("/read-card", content=b"not json").status_code == 400


def test_event_stream_delivers_committed_taps(api: tuple[LocalApi, httpx.Client]) -> None:
    server, client = api
    with client.stream("GET", "/events") as stream:
        server.context.events.publish({"tap_id": "0001", "result": "accepted"})
        for line in stream.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line.removeprefix("data: ")) == {"tap_id": "0001", "result": "accepted"}
                break


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    context = ApiContext(TOKEN, lambda: {"ok": True}, EventHub(), None)
    server = LocalApi(f"unix:{path}", context)
    server.start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://sscard") as client:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            assert client.get("/status", headers=headers).json() == {"ok": True}
            assert client.post("/read-card", headers=headers, json={}).status_code == 409
    finally:
        server.stop()
    assert not path.exists()
