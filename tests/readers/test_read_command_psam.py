"""`sscard read` on real cards in the wild, over pcscd and vpcd: a PSAM that cannot authenticate
the SSSE, a clone, the holder's name in two records, the transport card number, a purse with an
overdraft allowance, amounts as a person reads them, and a command that says it is waiting."""

from __future__ import annotations

import json
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
from sscard_sim.pcscd import wait_for_presence
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink
from tests.conftest import SLOT0, SLOT1
from tests.support import VPCD

Present = Callable[..., VpcdLink]
Sscard = Callable[..., subprocess.CompletedProcess[str]]
EXTENSION = "某某某"


@pytest.fixture
def sscard(capsys: pytest.CaptureFixture[str]) -> Iterator[Sscard]:
    """The command parsed and run in this process; its logs go to the real stderr."""
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


def _psam(present: Present, profile: str) -> None:
    present(VirtualPsam.from_profile(profile), SLOT1)
    assert wait_for_presence(SLOT1, present=True), "pcscd never saw the PSAM"


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


# --------------------------------------------------------------------------- a PSAM of another scheme


def test_read_with_a_psam_that_cannot_authenticate_shows_what_it_could_read(
    present: Present, sscard: Sscard
) -> None:
    _psam(present, "foreign-psam")
    card = VirtualCard.from_profile("sichuan")
    present(card, SLOT0)
    result = sscard("read", "--config", VPCD, "--json", "--reveal", "--timeout", "10")
    document = _json(result)
    ssse = document["image"]["data"]["ssse"]
    assert (ssse["authenticated"], ssse["ef06_read"]) == (False, False)
    assert ssse["spec_version"] == "3.00"
    assert ssse["card_number"] == card.profile.ssse.card_number
    assert ssse["expiry_date"] == card.profile.ssse.expiry_date.isoformat()
    assert ssse["name"] is None and ssse["birth_date"] is None
    assert ssse["authentication_problem"] == (
        "SSSE authentication: the PSAM does not know the command (6D00 to PSAM VERIFY CARD)"
    )
    assert "holder data (EF06) not read: SSSE authentication: the PSAM does not know the command (6D00" in result.stderr
    assert card.profile.tunion is not None
    assert document["image"]["data"]["tunion"]["balance"] == card.profile.tunion.balance
    assert "no card within" not in result.stderr


def test_read_with_a_psam_that_cannot_authenticate_in_text(present: Present, sscard: Sscard) -> None:
    _psam(present, "foreign-psam")
    present(VirtualCard.from_profile("chongqing"), SLOT0)
    lines = _lines(sscard("read", "--config", VPCD, "--timeout", "10"))
    problem = lines["ssse.authentication_problem"]
    assert problem.endswith("the PSAM does not know the command (6D00 to PSAM VERIFY CARD)")
    assert lines["ssse.spec_version"] == "3.00"
    assert lines["ssse.ef06_read"] == "False"


def test_read_of_a_clone_says_it_failed_authentication_and_exits_1(present: Present, sscard: Sscard) -> None:
    _psam(present, "demo-psam")
    present(VirtualCard.from_profile("cloned"), SLOT0)
    result = sscard("read", "--config", VPCD, "--timeout", "10")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the card could not be read: SSSE authentication failed at psam verify card" in result.stderr
    assert "6300" in result.stderr


# --------------------------------------------------------------------------- what is shown


@pytest.fixture
def long_name(tmp_path: Path) -> VirtualCard:
    """The Sichuan card with a name too long for item 09: the rest is in item 4E."""
    profile = tmp_path / "long-name.toml"
    profile.write_text(f'[card]\nbase = "sichuan"\n\n[ssse.holder]\nname_extension = "{EXTENSION}"\n', encoding="utf-8")
    return VirtualCard.from_profile(profile)


def test_read_joins_the_name_with_its_extension(present: Present, sscard: Sscard, long_name: VirtualCard) -> None:
    _psam(present, "demo-psam")
    present(long_name, SLOT0)
    full = long_name.profile.ssse.name + EXTENSION
    ssse = _json(sscard("read", "--config", VPCD, "--json", "--reveal", "--timeout", "10"))["image"]["data"]["ssse"]
    assert ssse["full_name"] == full
    assert (ssse["name"], ssse["name_extension"]) == (long_name.profile.ssse.name, EXTENSION)
    text = sscard("read", "--config", VPCD, "--reveal", "--timeout", "10")
    assert _lines(text)["ssse.name"] == full
    assert "ssse.name_extension" not in text.stdout


def test_read_masks_the_joined_name(present: Present, sscard: Sscard, long_name: VirtualCard) -> None:
    _psam(present, "demo-psam")
    present(long_name, SLOT0)
    result = sscard("read", "--config", VPCD, "--json", "--timeout", "10")
    document = _json(result)
    assert document["image"]["data"]["ssse"]["full_name"] == "***"
    assert "ssse.full_name" in document["image"]["personal"]
    assert EXTENSION not in result.stdout


def test_read_masks_the_transport_card_number_unless_revealed(present: Present, sscard: Sscard) -> None:
    card = VirtualCard.from_profile("sichuan")
    assert card.profile.tunion is not None
    serial = card.profile.tunion.public.application_serial
    present(card, SLOT0)
    masked = sscard("read", "--config", VPCD, "--json", "--no-psam", "--timeout", "10")
    document = _json(masked)
    assert document["image"]["data"]["tunion"]["public"]["application_serial"] == "***"
    assert "tunion.public.application_serial" in document["image"]["personal"]
    text = sscard("read", "--config", VPCD, "--no-psam", "--timeout", "10")
    for result in (masked, text):
        assert serial not in result.stdout and serial[1:] not in result.stdout
    revealed = _json(sscard("read", "--config", VPCD, "--json", "--no-psam", "--reveal", "--timeout", "10"))
    assert revealed["image"]["data"]["tunion"]["public"]["application_serial"] == serial


def test_read_shows_own_money_apart_from_the_overdraft_allowance(present: Present, sscard: Sscard) -> None:
    card = VirtualCard.from_profile("chongqing")
    assert card.profile.tunion is not None
    own, allowance = card.profile.tunion.balance, card.profile.tunion.overdraft_limit
    assert allowance > 0
    present(card, SLOT0)
    document = _json(sscard("read", "--config", VPCD, "--json", "--no-psam", "--timeout", "10"))
    tunion = document["image"]["data"]["tunion"]
    assert (tunion["balance"], tunion["overdraft_allowance"]) == (own, allowance)
    lines = _lines(sscard("read", "--config", VPCD, "--no-psam", "--timeout", "10"))
    assert lines["tunion.balance"] == f"{own // 100}.{own % 100:02d} yuan"
    assert lines["tunion.overdraft_allowance"] == f"{allowance // 100}.{allowance % 100:02d} yuan"


def test_read_shows_amounts_in_yuan_and_json_in_fen(present: Present, sscard: Sscard) -> None:
    card = VirtualCard.from_profile("sichuan")
    assert card.profile.tunion is not None and card.profile.ecash is not None
    ecash_fen = card.profile.ecash.balance
    logged = [record.amount for record in card.profile.tunion.transactions]
    assert ecash_fen % 100 and logged
    present(card, SLOT0)
    data = _json(sscard("read", "--config", VPCD, "--json", "--no-psam", "--timeout", "10"))["image"]["data"]
    assert data["ecash"]["balance"] == ecash_fen
    lines = _lines(sscard("read", "--config", VPCD, "--no-psam", "--timeout", "10"))
    assert lines["ecash.balance"] == f"{ecash_fen // 100}.{ecash_fen % 100:02d} yuan"
    shown = [lines[f"tunion.transactions[{i}].amount"] for i in range(len(data["tunion"]["transactions"]))]
    assert sorted(shown) == sorted(f"{fen // 100}.{fen % 100:02d} yuan" for fen in logged)
    assert lines["ssse.algorithm_id"] == "3"  # a number that is not money stays as it is


def test_read_says_it_is_waiting_before_a_card_comes(present: Present) -> None:
    """In a process of its own: the line must be on stderr while no card is there yet."""
    command = [sys.executable, "-m", "reader.cli", "read", "--config", VPCD, "--reader", SLOT0, "--no-psam"]
    command += ["--timeout", "20"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        before = ""
        while "waiting" not in before and process.poll() is None:  # a line ends or the command does
            before += process.stderr.readline()
        assert f"sscard read: waiting for a card on {SLOT0}…" in before
        present(VirtualCard.from_profile("sichuan"), SLOT0)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, before + err
    assert f"reader  {SLOT0}" in out


def test_read_without_a_card_names_the_readers_it_waited_on(pcscd: object, sscard: Sscard) -> None:
    result = sscard("read", "--config", VPCD, "--timeout", "0.5")
    assert result.returncode == 3
    assert "waiting for a card on pcsc-contactless (/" in result.stderr
