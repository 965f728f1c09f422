"""Fixtures for the reader tests: PC/SC readers on the vpcd bench, cards inserted without waiting."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from reader.backends.base import CancelEvent, CardSide, ReaderKind
from reader.backends.pcsc import PcscReader
from sscard_sim.pcscd import VPCD_PORTS, PcscdBench, wait_for_presence
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT0

# pcscd polls vpcd every 400 ms (PCSCLITE_STATUS_POLL_RATE): the bound of every event.
POLL_BOUND = 0.4
# What a loaded two-core CI box may add to it.
SLACK = 0.6


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log event, debug included, with the context variables (reader, tap_id) merged in.

    The level is set here because another test may have configured a stricter one.
    """
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
            yield entries
    finally:
        structlog.configure(**saved)


@pytest.fixture
def cancel() -> CancelEvent:
    return CancelEvent()


@pytest.fixture
def reader_for(pcscd: PcscdBench) -> Iterator[Callable[..., PcscReader]]:
    """PcscReader factory for a vpcd slot; every reader is closed at teardown."""
    readers: list[PcscReader] = []

    def make(slot: str = SLOT0, kind: ReaderKind = ReaderKind.CONTACTLESS, **options: float) -> PcscReader:
        reader = PcscReader(f"^{re.escape(slot)}$", kind, name=f"test-{slot[-2:]}", **options)  # type: ignore[arg-type]
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture
def present(pcscd: PcscdBench) -> Iterator[Callable[[CardSide, str], VpcdLink]]:
    """Put a card in a vpcd slot without waiting for pcscd (latency is the test's business).

    Teardown takes every card away and waits until pcscd saw the slot empty, so the next
    test starts from a known state.
    """
    links: list[tuple[VpcdLink, str]] = []

    def insert(card: CardSide, slot: str = SLOT0) -> VpcdLink:
        link = VpcdLink(card, port=VPCD_PORTS[slot])
        link.insert()
        links.append((link, slot))
        return link

    yield insert
    for link, _ in links:
        link.remove()
    for slot in {slot for _, slot in links}:
        wait_for_presence(slot, present=False)
