"""The wheel as an operator installs it: built from the checkout, installed in a fresh virtual
environment outside it, and run from there (example files, configuration check, the demo).

The source is copied first, so the build leaves nothing in the shared checkout. The
dependencies come from the package index through pip's cache, as on a terminal.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sscard_sim.pcscd import PcscdBench

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("reader", "protocols", "sscard_sim", "config", "systemd", "pyproject.toml", "README.md", "LICENSE")
KINDS = ("bus", "library", "pharmacy", "canteen", "venue", "demo")


def _pip(python: Path, *args: str, cwd: Path) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], cwd=cwd, check=True, timeout=900
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    _pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(out), str(source), cwd=out)
    (built,) = out.glob("sscard_terminal-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin folder of a fresh venv (no system site-packages) with the wheel installed."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True, symlinks=True)
    python = home / "bin" / "python"
    _pip(python, "install", str(wheel), cwd=home)
    return home / "bin"


def _sscard(
    bin_dir: Path, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run from a folder with nothing of the checkout in it, so only the installed package can answer."""
    return subprocess.run(
        [str(bin_dir / "sscard"), *args],
        cwd=bin_dir,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(bin_dir.parent)},
    )


def test_the_wheel_carries_every_package_example_and_unit(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {str(path.relative_to(ROOT)) for top in ("reader", "protocols") for path in (ROOT / top).rglob("*.py")}
    assert code <= names, f"modules left out of the wheel (pyproject.toml packages): {sorted(code - names)}"
    for path in (ROOT / "config").glob("*.toml"):
        assert f"reader/examples/config/{path.name}" in names
    for path in (ROOT / "systemd").iterdir():
        assert f"reader/examples/systemd/{path.name}" in names
    assert not any(name.startswith(("config/", "systemd/", "tests/")) for name in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"License-Expression: {project['license']}" in metadata
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert project["classifiers"] and all(f"Classifier: {c}" in metadata for c in project["classifiers"])


def test_version_from_the_installed_metadata(installed: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = _sscard(installed, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"sscard {version}\n", "")


@pytest.mark.parametrize("kind", KINDS)
def test_examples_come_from_the_package_and_check(kind: str, installed: Path, tmp_path: Path) -> None:
    example = _sscard(installed, "example-config", kind)
    assert example.returncode == 0 and example.stdout == (ROOT / "config" / f"{kind}.toml").read_text()
    checked = _sscard(installed, "check-config", "-", stdin=example.stdout)
    if kind == "bus":
        # The bus example names the back office's CA and the terminal's certificate, which an
        # installation puts in /etc/sscard: the check must say they are not there.
        assert checked.returncode == 78 and checked.stdout == ""
        assert [line.split(": ")[1] for line in checked.stderr.splitlines()] == [
            "uplink.mqtt.tls.ca_file",
            "uplink.mqtt.tls.client_cert_file",
        ]
    else:
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith("<stdin>: ok (")


def test_systemd_files_come_from_the_package(installed: Path) -> None:
    listed = _sscard(installed, "example-unit", "--list")
    assert listed.returncode == 0
    assert sorted(listed.stdout.split()) == sorted(path.name for path in (ROOT / "systemd").iterdir())
    for name in listed.stdout.split():
        shown = _sscard(installed, "example-unit", name)
        assert shown.returncode == 0 and shown.stdout == (ROOT / "systemd" / name).read_text()
    assert _sscard(installed, "example-unit").stdout == (ROOT / "systemd" / "sscard.service").read_text()


def test_the_demo_runs_from_the_installed_wheel(installed: Path, pcscd: PcscdBench) -> None:
    """The whole demo: the bundled demo configuration, the simulator's profiles, the real daemon."""
    result = _sscard(installed, "demo", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "Summary:" in result.stdout
