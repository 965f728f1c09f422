"""The sim bench: the demo PSAM stays in slot 1 for a whole module; cards come and go in slot 0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sscard_sim.pcscd import VPCD_PORTS, PcscdBench
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT1, wait_for_state
from tests.sim.pcsc_client import PcscChannel


@pytest.fixture(scope="module")
def psam_device(pcscd: PcscdBench) -> Iterator[VirtualPsam]:
    psam = VirtualPsam.from_profile("demo-psam")
    link = VpcdLink(psam, port=VPCD_PORTS[SLOT1])
    link.insert()
    assert wait_for_state(SLOT1, present=True), "pcscd never saw the PSAM"
    yield psam
    link.remove()
    wait_for_state(SLOT1, present=False)


@pytest.fixture
def psam(psam_device: VirtualPsam) -> Iterator[PcscChannel]:
    """A pyscard connection to the demo PSAM in slot 1."""
    with PcscChannel(SLOT1) as channel:
        yield channel
