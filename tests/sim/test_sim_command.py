"""`sscard sim card` and `sscard sim psam` as an integrator runs them: separate processes, real stacks."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nfc
import pytest

from protocols.purchase import PurchaseRequest, PurchaseResult, purchase
from protocols.ssse_read import read_ssse
from protocols.tunion_read import read_tunion
from sscard_sim.pcscd import PcscdBench
from sscard_sim.psam import VirtualPsam
from tests.conftest import SLOT0, SLOT1, wait_for_state
from tests.sim.pcsc_client import PcscChannel

WHEN = dt.datetime(2025, 6, 3, 9, 0, 0)


class Sim:
    """One `sscard sim ...` process; stopped with SIGTERM like a service manager would."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reader.cli", "sim", *args],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def sims(pcscd: PcscdBench, tmp_path: Path) -> Iterator[list[Sim]]:
    started: list[Sim] = []
    yield started
    for sim in started:
        sim.stop()
    wait_for_state(SLOT0, present=False)
    wait_for_state(SLOT1, present=False)


def test_card_and_psam_commands_with_a_state_file(sims: list[Sim], tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    sims.append(Sim(tmp_path / "psam.log", "psam"))
    card = Sim(tmp_path / "card.log", "card", "--profile", "sichuan", "--state", str(state))
    sims.append(card)
    assert wait_for_state(SLOT1, present=True, timeout=10), sims[0].output()
    assert wait_for_state(SLOT0, present=True, timeout=10), card.output()
    with PcscChannel(SLOT0) as channel, PcscChannel(SLOT1) as psam:
        assert read_ssse(channel.transmit, psam.transmit).ef06_read
        result = purchase(channel.transmit, psam.transmit, PurchaseRequest(300, WHEN))
        assert isinstance(result, PurchaseResult) and result.mac2_verified
    assert card.stop() == 0
    assert wait_for_state(SLOT0, present=False)
    assert "inserted" in card.output() and "removed" in card.output()

    again = Sim(tmp_path / "again.log", "card", "--profile", "sichuan", "--state", str(state))
    sims.append(again)
    assert wait_for_state(SLOT0, present=True, timeout=10), again.output()
    with PcscChannel(SLOT0) as channel:
        image = read_tunion(channel.transmit)
        assert image is not None
        assert image.balance == 5000 - 300
        assert image.transactions[0].atc == result.offline_atc + 1


def test_tap_seconds_inserts_then_removes(sims: list[Sim], tmp_path: Path) -> None:
    tap = Sim(tmp_path / "tap.log", "card", "--profile", "chongqing", "--tap-seconds", "0.6")
    sims.append(tap)
    assert wait_for_state(SLOT0, present=True, timeout=10), tap.output()
    assert tap.process.wait(10) == 0
    assert wait_for_state(SLOT0, present=False)


def test_repeat_taps_again(sims: list[Sim], tmp_path: Path) -> None:
    args = ("card", "--profile", "elderly", "--tap-seconds", "0.6", "--repeat", "--gap-seconds", "0.6")
    taps = Sim(tmp_path / "repeat.log", *args)
    sims.append(taps)
    for _ in range(2):
        assert wait_for_state(SLOT0, present=True, timeout=10), taps.output()
        assert wait_for_state(SLOT0, present=False, timeout=10), taps.output()
    assert taps.process.poll() is None
    assert taps.stop() == 0


def test_a_bad_profile_is_reported(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "reader.cli", "sim", "card", "--profile", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert "no profile" in run.stderr


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_nfcpy_reads_and_charges_the_card_over_udp(tmp_path: Path) -> None:
    port = free_udp_port()
    card = Sim(tmp_path / "nfc.log", "card", "--profile", "sichuan", "--nfc-udp", str(port))
    psam = VirtualPsam.from_profile("demo-psam")
    psam.power_on()
    try:
        clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{port}")
        try:
            tag = None
            for _ in range(20):
                tag = clf.connect(rdwr={"targets": ["106A"], "on-connect": lambda tag: False})
                if tag is not None:
                    break
            assert tag is not None, card.output()

            def transmit(apdu: bytes) -> bytes:
                return bytes(tag.transceive(apdu))

            image = read_ssse(transmit, psam.transmit)
            assert image.ef06_read and image.name == "测试甲"
            result = purchase(transmit, psam.transmit, PurchaseRequest(100, WHEN))
            assert isinstance(result, PurchaseResult) and result.mac2_verified
            after = read_tunion(transmit)
            assert after is not None and after.balance == 5000 - 100
        finally:
            clf.close()
    finally:
        assert card.stop() == 0
