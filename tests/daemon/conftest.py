"""Session fixtures of the daemon's end-to-end tests: captured logs, the PSAM, and one run of
each scenario (scenarios.py), shared by the tests that judge it and by the privacy test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reader.log import configure_logging
from reader.sim.pcscd import VPCD_PORTS, PcscdBench
from reader.sim.psam import VirtualPsam
from reader.sim.tearing import TearingCard
from reader.sim.vpcd import VpcdLink
from tests.daemon import scenarios
from tests.daemon.bench import SLOT_PSAM, LogBuffer, wait_for_presence


@pytest.fixture(scope="session")
def tap_logs() -> LogBuffer:
    """Every structlog line of the scenarios, as JSON lines, at debug level."""
    buffer = LogBuffer()
    configure_logging(level="debug", stream=buffer)
    return buffer


@pytest.fixture(scope="session")
def psam(tap_logs: LogBuffer, pcscd: PcscdBench) -> Iterator[TearingCard]:
    """The demo PSAM in the SAM slot for the whole session; it can be torn like a card."""
    card = TearingCard(VirtualPsam.from_profile("demo-psam"))
    link = VpcdLink(card, port=VPCD_PORTS[SLOT_PSAM])
    link.insert()
    assert wait_for_presence(SLOT_PSAM, present=True), "pcscd never saw the PSAM"
    yield card
    link.remove()
    wait_for_presence(SLOT_PSAM, present=False)


@pytest.fixture(scope="session")
def bus_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.BusRun:
    return scenarios.bus(tmp_path_factory.mktemp("bus"))


@pytest.fixture(scope="session")
def library_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.LibraryRun:
    return scenarios.library(tmp_path_factory.mktemp("library"))


@pytest.fixture(scope="session")
def pharmacy_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.PharmacyRun:
    return scenarios.pharmacy(tmp_path_factory.mktemp("pharmacy"))


@pytest.fixture(scope="session")
def tearing_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.TearingRun:
    return scenarios.tearing(tmp_path_factory.mktemp("tearing"), psam)


@pytest.fixture(scope="session")
def out_of_service_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.OutOfServiceRun:
    return scenarios.out_of_service(tmp_path_factory.mktemp("out-of-service"))
