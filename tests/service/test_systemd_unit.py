"""The shipped systemd unit: it parses cleanly, it is hardened, and it says what the daemon needs.

`systemd-analyze verify` and `security --offline` work without systemd as PID 1. verify
reports value errors as "ignoring" warnings with exit status 0, so any output is a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "sscard.service"
NFC_DROP_IN = SYSTEMD_DIR / "nfc-usb.conf"
SHIPPED_EXEC = "/opt/sscard/bin/sscard"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)"
)


def _settings(text: str) -> dict[str, list[str]]:
    """Unit settings by key, every assignment kept (systemd keys repeat and accumulate)."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def _installed_copy(directory: Path, text: str) -> Path:
    """A copy of the unit whose ExecStart is this environment's real `sscard` script.

    verify insists that the binary exists; the shipped unit names the /opt/sscard venv.
    """
    script = Path(sys.executable).parent / "sscard"
    assert script.exists(), f"{script} missing: install the project into the venv"
    assert f"ExecStart={SHIPPED_EXEC} " in text
    path = directory / "sscard.service"
    path.write_text(text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={script} "))
    return path


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_verify_is_silent(tmp_path: Path) -> None:
    result = _verify(_installed_copy(tmp_path, UNIT.read_text()))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_catches_a_typo(tmp_path: Path) -> None:
    # The check above can fail: a misspelt value is reported (with exit status 0).
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strcit")
    result = _verify(_installed_copy(tmp_path, broken))
    assert "strcit" in result.stdout + result.stderr


def test_verify_with_nfc_drop_in_is_silent(tmp_path: Path) -> None:
    unit = _installed_copy(tmp_path, UNIT.read_text())
    drop_ins = tmp_path / "sscard.service.d"
    drop_ins.mkdir()
    shutil.copy(NFC_DROP_IN, drop_ins / "nfc-usb.conf")
    result = _verify(unit)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _security(*args: str) -> tuple[float, str]:
    """The overall exposure figure and the full report."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for sscard\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1)), result.stdout


def test_security_exposure_within_bound() -> None:
    exposure, report = _security(str(UNIT))
    assert exposure <= MAX_EXPOSURE, report


def test_security_exposure_with_nfc_drop_in_within_bound(tmp_path: Path) -> None:
    # Installed the way the install notes say, drop-in included, under a scratch root.
    system = tmp_path / "etc" / "systemd" / "system"
    (system / "sscard.service.d").mkdir(parents=True)
    shutil.copy(UNIT, system / "sscard.service")
    shutil.copy(NFC_DROP_IN, system / "sscard.service.d" / "nfc-usb.conf")
    exposure, report = _security(f"--root={tmp_path}", "sscard.service")
    assert "char-usb_device:rw" in report, "the drop-in was not applied"
    assert exposure <= MAX_EXPOSURE, report


def test_unit_states_what_the_daemon_relies_on() -> None:
    settings = _settings(UNIT.read_text())
    assert settings["ExecStart"] == [f"{SHIPPED_EXEC} run --config /etc/sscard/config.toml"]
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["Restart"] == ["on-failure"]
    assert "WatchdogSec" in settings
    assert settings["StateDirectory"] == ["sscard"]
    assert settings["ConfigurationDirectory"] == ["sscard"]
    assert any("pcscd.socket" in value.split() for value in settings["After"])
    assert any("pcscd.socket" in value.split() for value in settings["Wants"])
    assert settings["DevicePolicy"] == ["closed"]
    assert "dialout" in " ".join(settings["SupplementaryGroups"]).split()
    assert settings["LimitCORE"] == ["0"]
    assert settings["UMask"] == ["0077"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert all(":" not in value for value in settings["LoadCredential"]), "credentials come from credstore"
