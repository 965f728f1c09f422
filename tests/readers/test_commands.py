"""`sscard readers` and `sscard read` as a user runs them, over the real stacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from reader.cli import build_parser
from reader.log import configure_logging
from sscard_sim.card import VirtualCard
from sscard_sim.nfc_udp import NfcUdpCard
from sscard_sim.pcscd import wait_for_presence
from sscard_sim.pn532 import Pn532Simulator
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT0, SLOT1
from tests.readers.cards import CountingCard
from tests.support import VPCD

Present = Callable[..., VpcdLink]
Sscard = Callable[..., subprocess.CompletedProcess[str]]


def sscard_process(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, exactly as a user runs it."""
    return subprocess.run([sys.executable, "-m", "reader.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def sscard(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """The command parsed and run in this process (no interpreter start-up: the suite stays fast).

    Logs go to the real stderr, as `sscard` configures them, so stdout holds only the output.
    """
    saved = structlog.get_config()
    configure_logging("error", stream=sys.__stderr__)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        parsed = build_parser().parse_args(list(args))
        status = parsed.func(parsed)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["sscard", *args], status, captured.out, captured.err)

    yield run
    structlog.configure(**saved)


def rows_of(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(result.stdout)}


@pytest.fixture
def config(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "terminal.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def pty_path() -> Iterator[str]:
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_readers_gives_each_slot_its_role_and_card(present: Present) -> None:
    present(CountingCard(), SLOT0)
    assert wait_for_presence(SLOT0, present=True), "pcscd never saw the card"  # roles, not latency
    result = sscard_process("readers", "--config", VPCD, "--json")
    assert result.returncode == 0, result.stderr
    rows = rows_of(result)
    assert rows[SLOT0]["role"] == "contactless"
    assert rows[SLOT0]["state"] == "present"
    assert rows[SLOT0]["card"] == "contactless iso14443-4"
    assert rows[SLOT1]["role"] == "sam"
    assert rows[SLOT1]["state"] == "empty"


def test_readers_reports_what_the_configuration_names_and_is_missing(
    pcscd: object, config: Callable[[str], Path], tmp_path: Path, sscard: Sscard
) -> None:
    pcsc = '[readers.pcsc]\ncontactless = "virtual pcd 00 00"\nsam = "no such reader"\n'
    path = config(f'{pcsc}[readers.serial]\nrelay = "{tmp_path}/ttyRELAY"\n')
    result = sscard("readers", "--config", str(path), "--json")
    assert result.returncode == 1
    rows = rows_of(result)
    assert rows["/no such reader/"] == rows["/no such reader/"] | {"role": "sam", "state": "missing"}
    assert rows[SLOT1]["role"] is None  # the vpcd PSAM slot no longer matches any role
    assert rows[f"{tmp_path}/ttyRELAY"]["state"] == "missing"


def test_readers_opens_configured_nfc_and_serial_devices(
    pcscd: object, config: Callable[[str], Path], pty_path: str, sscard: Sscard
) -> None:
    with NfcUdpCard(CountingCard(), present=False) as card:
        nfc_path = card.path
        pcsc = '[readers.pcsc]\ncontactless = "virtual pcd 00 00"\nsam = "virtual pcd 00 01"\n'
        path = config(f'{pcsc}[readers.nfc]\npath = "{nfc_path}"\n[readers.serial]\ndisplay = "{pty_path}"\n')
        result = sscard("readers", "--config", str(path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = rows_of(result)
    assert rows[nfc_path]["state"] == "available"
    assert rows[pty_path] == rows[pty_path] | {"backend": "serial", "role": "display", "state": "connected"}


def test_readers_with_a_broken_configuration_exits_2(config: Callable[[str], Path], sscard: Sscard) -> None:
    result = sscard("readers", "--config", str(config('[readers.pcsc]\ncontactless = "("\n')))
    assert result.returncode == 2
    assert "not a regular expression" in result.stderr


@pytest.fixture
def sichuan() -> VirtualCard:
    return VirtualCard.from_profile("sichuan")


def test_read_over_pcsc_masks_personal_fields_and_uses_the_psam(present: Present, sichuan: VirtualCard) -> None:
    present(VirtualPsam.from_profile(), SLOT1)
    assert wait_for_presence(SLOT1, present=True)
    present(sichuan, SLOT0)
    result = sscard_process("read", "--config", VPCD, "--json", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["reader"] == SLOT0
    assert document["uid"] == "***"
    ssse = document["image"]["data"]["ssse"]
    assert ssse["authenticated"] is True  # a 3.00 card shows EF05/EF06 only after the PSAM's authentication
    assert ssse["card_number"] == ssse["name"] == ssse["social_security_number"] == "***"
    assert sichuan.profile.ssse.card_number not in result.stdout
    assert sichuan.profile.ssse.name not in result.stdout
    assert "ssse.card_number" in document["image"]["personal"]


def test_read_reveal_shows_the_card_as_personalised(present: Present, sichuan: VirtualCard, sscard: Sscard) -> None:
    present(VirtualPsam.from_profile(), SLOT1)
    assert wait_for_presence(SLOT1, present=True)
    present(sichuan, SLOT0)
    result = sscard("read", "--config", VPCD, "--json", "--reveal", "--reader", SLOT0, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    ssse = document["image"]["data"]["ssse"]
    assert ssse["card_number"] == sichuan.profile.ssse.card_number
    assert ssse["name"] == sichuan.profile.ssse.name
    assert document["uid"] == sichuan.profile.uid.hex().upper()
    assert sichuan.profile.tunion is not None
    assert document["image"]["data"]["tunion"]["balance"] == sichuan.profile.tunion.balance


def test_read_text_output(present: Present, sichuan: VirtualCard, sscard: Sscard) -> None:
    present(sichuan, SLOT0)
    result = sscard("read", "--config", VPCD, "--no-psam", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert f"reader  {SLOT0}" in result.stdout
    assert "personal fields masked" in result.stdout


def test_read_over_nfc_udp(pcscd: object, sichuan: VirtualCard, sscard: Sscard) -> None:
    with NfcUdpCard(sichuan) as card:
        nfc_path = card.path
        result = sscard("read", "--config", VPCD, "--json", "--reveal", "--reader", nfc_path, "--timeout", "15")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["reader"] == nfc_path
    assert document["card"] == "contactless iso14443-4"
    assert sichuan.profile.tunion is not None
    assert document["image"]["data"]["tunion"]["balance"] == sichuan.profile.tunion.balance


def test_read_over_the_simulated_pn532(pcscd: object, sichuan: VirtualCard, sscard: Sscard) -> None:
    simulator = Pn532Simulator(sichuan).start()
    try:
        result = sscard("read", "--config", VPCD, "--json", "--reader", simulator.path, "--timeout", "15")
    finally:
        simulator.stop()
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["image"]["data"]["ssse"]["spec_version"] == sichuan.profile.ssse.spec_version


def test_read_without_a_card_times_out(pcscd: object, sscard: Sscard) -> None:
    result = sscard("read", "--config", VPCD, "--timeout", "0.5")
    assert result.returncode == 3
    assert "no card" in result.stderr
