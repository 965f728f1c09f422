"""The shared test bench: a real pcscd with the two vpcd virtual readers.

Tests that need PC/SC ask for `pcscd`; it is started once per session and stopped at the
end, unless a pcscd we did not start was already serving, which is used and left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from reader.backends.base import CardSide
from sscard_sim.pcscd import VPCD_PORTS, PcscdBench
from sscard_sim.pcscd import wait_for_presence as wait_for_state
from sscard_sim.vpcd import VpcdLink

SLOT0 = "Virtual PCD 00 00"
SLOT1 = "Virtual PCD 00 01"


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PcscdBench]:
    bench = PcscdBench(log_file=tmp_path_factory.mktemp("pcscd") / "pcscd.log")
    bench.start()
    yield bench
    bench.stop()


@pytest.fixture
def attach(pcscd: PcscdBench) -> Iterator[Callable[[CardSide, str], VpcdLink]]:
    """Insert a card-side emulator into a vpcd slot; every card is removed at teardown."""
    links: list[VpcdLink] = []

    def insert(card: CardSide, reader: str = SLOT0) -> VpcdLink:
        link = VpcdLink(card, port=VPCD_PORTS[reader])
        link.insert()
        links.append(link)
        assert wait_for_state(reader, present=True), f"pcscd never saw the card in {reader}"
        return link

    yield insert
    for link in links:
        reader = next(name for name, port in VPCD_PORTS.items() if port == link.port)
        link.remove()
        wait_for_state(reader, present=False)
