"""The canteen's price endpoint on a real local API server, and the price board behind it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
from openapi_spec_validator import validate as validate_openapi

from reader.daemon.api import OPENAPI_DOCUMENT, ApiContext, LocalApi
from reader.daemon.events import CardRequests, EventHub
from reader.daemon.meal_price import CanteenRequests, MealPrices

TOKEN = "canteen-token-5e1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeClock:
    """A monotonic clock moved by the test (the board's expiry is all it drives)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Board = tuple[MealPrices, FakeClock, httpx.Client]


def serve(requests: CardRequests) -> LocalApi:
    server = LocalApi("127.0.0.1:0", ApiContext(TOKEN, dict, EventHub(), requests))
    server.start()
    return server


@pytest.fixture
def board() -> Iterator[Board]:
    clock = FakeClock()
    prices = MealPrices(60, clock)
    server = serve(CanteenRequests(prices))
    client = httpx.Client(base_url=f"http://{server.address}", headers=AUTH, timeout=10)
    yield prices, clock, client
    client.close()
    server.stop()


def schema_validator(name: str) -> jsonschema.protocols.Validator:
    document = json.loads(OPENAPI_DOCUMENT)
    resource = referencing.Resource.from_contents(document, default_specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource("urn:sscard-api", resource)
    return jsonschema.Draft202012Validator({"$ref": f"urn:sscard-api#/components/schemas/{name}"}, registry=registry)


def test_a_price_set_is_in_force_until_it_expires(board: Board) -> None:
    prices, clock, client = board
    answer = client.put("/v1/canteen/price", json={"amount": 1500, "expires_in": 20})
    assert answer.status_code == 200
    assert answer.json() == {"amount": 1500, "expires_in": 20.0, "longest": 60}
    schema_validator("MealPrice").validate(answer.json())
    clock.now += 19.5
    assert client.get("/v1/canteen/price").json()["amount"] == 1500
    clock.now += 0.5
    assert client.get("/v1/canteen/price").json() == {"amount": None, "expires_in": None, "longest": 60}
    assert prices.current() is None


def test_an_expiry_beyond_the_canteen_s_longest_is_cut_to_it(board: Board) -> None:
    _, _, client = board
    assert client.put("/v1/canteen/price", json={"amount": 900, "expires_in": 3600}).json()["expires_in"] == 60
    assert client.put("/v1/canteen/price", json={"amount": 900}).json()["expires_in"] == 60


def test_a_price_is_taken_once_and_a_replaced_one_is_not_taken(board: Board) -> None:
    prices, _, client = board
    client.put("/v1/canteen/price", json={"amount": 1000})
    read = prices.current()
    assert read is not None
    client.put("/v1/canteen/price", json={"amount": 1200})
    assert not prices.take(read), "the tap read a price the POS has replaced since"
    newer = prices.current()
    assert newer is not None and newer.amount == 1200
    assert prices.take(newer)
    assert not prices.take(newer)
    assert client.get("/v1/canteen/price").json()["amount"] is None


def test_a_withdrawn_price_is_gone(board: Board) -> None:
    prices, _, client = board
    client.put("/v1/canteen/price", json={"amount": 1000})
    assert client.delete("/v1/canteen/price").json()["withdrawn"] is True
    assert prices.current() is None
    assert client.delete("/v1/canteen/price").json()["withdrawn"] is False


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": 0}',
        b'{"amount": 100001}',
        b'{"amount": 12.5}',
        b'{"amount": "1500"}',
        b'{"amount": true}',
        b'{"amount": 1500, "expires_in": 0}',
        b'{"amount": 1500, "expires_in": -1}',
        b'{"amount": 1500, "expires_in": NaN}',
        b'{"amount": 1500, "expires_in": Infinity}',
        b'{"amount": 1500, "currency": "CNY"}',
        b"[1500]",
        b"1500",
        b"",
        b"\xff",
    ],
)
def test_a_bad_price_is_refused_and_changes_nothing(
    board: Board, body: bytes
) -> None:
    prices, _, client = board
    client.put("/v1/canteen/price", json={"amount": 700})
    answer = client.put("/v1/canteen/price", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert "error" in answer.json()
    current = prices.current()
    assert current is not None and current.amount == 700


def test_the_price_needs_the_token(board: Board) -> None:
    _, _, client = board
    base = str(client.base_url)
    assert httpx.put(f"{base}/v1/canteen/price", json={"amount": 1}).status_code == 401
    assert httpx.get(f"{base}/v1/canteen/price").status_code == 401


def test_another_terminal_kind_has_no_price() -> None:
    server = serve(CardRequests())
    try:
        with httpx.Client(base_url=f"http://{server.address}", headers=AUTH, timeout=10) as client:
            assert client.put("/v1/canteen/price", json={"amount": 1000}).status_code == 409
            assert client.get("/v1/canteen/price").status_code == 409
            assert client.delete("/v1/canteen/price").status_code == 409
    finally:
        server.stop()


def test_the_openapi_document_names_the_endpoint_and_stays_valid() -> None:
    document = json.loads(OPENAPI_DOCUMENT)
    validate_openapi(document)
    assert set(document["paths"]["/v1/canteen/price"]) == {"get", "put", "delete"}
    checked_in = Path(__file__).resolve().parents[2] / "reader" / "daemon" / "openapi.json"
    assert json.loads(checked_in.read_bytes()) == document


def test_the_real_clock_expires_a_price() -> None:
    prices = MealPrices(0.2)
    prices.set(500)
    assert prices.current() is not None
    time.sleep(0.25)
    assert prices.current() is None
