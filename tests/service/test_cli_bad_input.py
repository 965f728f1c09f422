"""Every subcommand given bad arguments: one line on stderr, a non-zero exit, no traceback.

The installed `sscard` is run as a process, as an operator types it. The readers named
are vpcd slots or nothing: no case gets as far as a card.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SSCARD = Path(sys.executable).with_name("sscard")

# (arguments, expected exit status); {tmp} is a folder with `notsqlite` (text), `dir/`, `bad.toml`.
CASES: list[tuple[str, int]] = [
    ("", 2),
    ("no-such-command", 2),
    ("--log-level verbose readers", 2),
    ("readers --log-level verbose", 2),
    ("queue status --log-level loud", 2),
    ("--log-level", 2),
    ("check-config", 2),
    ("check-config {tmp}/absent.toml", 78),
    ("check-config {tmp}/dir", 78),
    ("check-config {tmp}/notsqlite", 78),
    ("check-config --secrets {tmp}/bad.toml", 78),
    ("run", 2),
    ("run --config {tmp}/absent.toml", 78),
    ("run --config {tmp}/dir", 78),
    ("queue --db {tmp}/notsqlite status", 1),
    ("queue --db {tmp}/notsqlite list", 1),
    ("queue --db {tmp}/notsqlite export -", 1),
    ("queue --db {tmp}/notsqlite retry-poison", 1),
    ("queue --db {tmp}/dir status", 1),
    ("queue --db {tmp}/absent status", 1),
    ("queue --db {tmp}/absent list --limit -3", 2),
    ("queue --db {tmp}/absent list --limit many", 2),
    ("queue --db {tmp}/absent nothing", 2),
    ("queue --db {tmp}/absent retry-poison --seq x", 2),
    ("decode", 2),
    ("decode no-such-kind 00", 2),
    ("decode tunion-15 zz", 2),
    ("decode tunion-15 123", 2),
    ("decode tunion-15 00", 2),
    ("readers --config {tmp}/absent.toml", 2),
    ("readers --config {tmp}/notsqlite", 2),
    ("readers --config {tmp}/dir", 2),
    ("readers --config {tmp}/badreaders.toml", 2),
    ("read --config {tmp}/absent.toml", 2),
    ("read --config {tmp}/notsqlite", 2),
    ("read --timeout soon", 2),
    ("sim", 2),
    ("sim card", 2),
    ("sim card --profile no-such-profile", 1),
    ("sim card --profile {tmp}/notsqlite", 1),
    ("sim card --profile sichuan --tap-seconds abc", 2),
    ("sim card --profile sichuan --tap-seconds -1", 2),
    ("sim card --profile sichuan --vpcd localhost:99999", 2),
    ("sim card --profile sichuan --vpcd nocolon", 2),
    ("sim card --profile sichuan --nfc-udp 0", 2),
    ("sim card --profile sichuan --repeat", 2),
    ("sim psam --profile {tmp}/notsqlite", 1),
    ("example-config", 2),
    ("example-config boat", 2),
    ("example-unit no-such-file", 2),
    ("demo --config {tmp}/absent.toml", 1),
    ("demo --no-such-option", 2),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "notsqlite").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp / "dir").mkdir()
    (tmp / "bad.toml").write_text(
        '[terminal]\nid = "bad id"\nprofile = "library"\ntoken_key = "file:/k"\n[library]\naccepted_regions = ["51"]\n'
    )
    (tmp / "badreaders.toml").write_text('[readers.pcsc]\ncontactless = "("\ntransmit_timeout = "x"\n')
    return tmp


def _run(args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "SSCARD_QUEUE_DB"}
    return subprocess.run(
        [str(SSCARD), *args.format(tmp=tmp).split()],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_every_bad_input_is_one_line_on_stderr(folder: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: (case, _run(case[0], folder)), CASES))
    failures = []
    for (args, status), result in results:
        lines = result.stderr.splitlines()
        if result.returncode != status or len(lines) != 1 or "Traceback" in result.stderr:
            failures.append(f"sscard {args}: exit {result.returncode} (wanted {status}), stderr {lines}")
    assert not failures, "\n".join(failures)


def test_every_subcommand_is_tried() -> None:
    from reader.cli import command_modules

    tried = {args.split()[0] for args, _ in CASES if args and not args.startswith("-")}
    assert set(command_modules()) <= tried | {"no-such-command"}, set(command_modules()) - tried


def test_global_options_go_before_or_after_the_subcommand(folder: Path) -> None:
    before = _run("--log-level debug example-config demo", folder)
    after = _run("example-config demo --log-level DEBUG", folder)
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout and "[terminal]" in before.stdout


def test_version_comes_from_the_package_metadata(folder: Path) -> None:
    from importlib.metadata import version

    result = _run("--version", folder)
    assert (result.returncode, result.stdout) == (0, f"sscard {version('sscard-terminal')}\n")


def test_help_documents_the_exit_statuses(folder: Path) -> None:
    for args in ("--help", "check-config --help", "queue status --help"):
        result = _run(args, folder)
        assert result.returncode == 0
        assert "exit status:" in result.stdout and "78" in result.stdout, args
