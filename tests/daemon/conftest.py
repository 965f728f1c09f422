"""Fixtures of the daemon's end-to-end tests: captured logs, the PSAM, and one run of each
scenario (scenarios.py), shared by the tests that judge it and by the privacy test.

They live for this package only: the PSAM leaves the SAM slot and the logging configuration
is given back before other packages' tests use the bench."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from reader.log import configure_logging
from sscard_sim.pcscd import VPCD_PORTS, PcscdBench, wait_for_presence
from sscard_sim.psam import VirtualPsam
from sscard_sim.tearing import TearingCard
from sscard_sim.vpcd import VpcdLink
from tests.daemon import scenarios
from tests.daemon.bench import SLOT_PSAM, LogBuffer


@pytest.fixture(scope="package")
def tap_logs() -> Iterator[LogBuffer]:
    """Every structlog line of the scenarios, as the daemon writes them (JSON lines), at debug level.

    Loggers are not cached meanwhile, so none stays bound to this buffer afterwards.
    """
    buffer = LogBuffer()
    restore = configure_logging(level="debug", stream=buffer)
    structlog.configure(cache_logger_on_first_use=False)
    yield buffer
    restore()


@pytest.fixture(scope="package")
def psam(tap_logs: LogBuffer, pcscd: PcscdBench) -> Iterator[TearingCard]:
    """The demo PSAM in the SAM slot for the whole session; it can be torn like a card."""
    card = TearingCard(VirtualPsam.from_profile("demo-psam"))
    link = VpcdLink(card, port=VPCD_PORTS[SLOT_PSAM])
    link.insert()
    assert wait_for_presence(SLOT_PSAM, present=True), "pcscd never saw the PSAM"
    yield card
    link.remove()
    wait_for_presence(SLOT_PSAM, present=False)


@pytest.fixture(scope="package")
def bus_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.BusRun:
    return scenarios.bus(tmp_path_factory.mktemp("bus"))


@pytest.fixture(scope="package")
def library_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.LibraryRun:
    return scenarios.library(tmp_path_factory.mktemp("library"))


@pytest.fixture(scope="package")
def pharmacy_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.PharmacyRun:
    return scenarios.pharmacy(tmp_path_factory.mktemp("pharmacy"))


@pytest.fixture(scope="package")
def tearing_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.TearingRun:
    return scenarios.tearing(tmp_path_factory.mktemp("tearing"), psam)


@pytest.fixture(scope="package")
def out_of_service_run(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> scenarios.OutOfServiceRun:
    return scenarios.out_of_service(tmp_path_factory.mktemp("out-of-service"))
