"""The configuration as an operator meets it: `sscard check-config` and `sscard run` on real files.

Every example in config/ must validate. Every kind of mistake must stop both commands with
exit status 78 (EX_CONFIG, which the unit does not restart on) and one line per problem
naming the file, the key and what is allowed, never a traceback, and never echo a secret.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import reader.commands.run
from reader.cli import main
from reader.config import EX_CONFIG, load_config, secret_references

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config").glob("*.toml"))
UNIT = ROOT / "systemd" / "sscard.service"
SSCARD = Path(sys.executable).with_name("sscard")
INLINE_SECRET = "9f86d081884c7d65-not-a-reference"
CREDENTIAL_PATH = re.compile(r"^/run/credentials/[^/]+/([^/]+)$")

BASE = """\
[terminal]
id = "TEST-BUS-01"
profile = "bus"
state_dir = "{state}"
token_key = "file:{key}"

[bus]
line = "812"
fare = 200
accepted_regions = ["51", "50"]

[readers.pcsc]
contactless = "virtual pcd 00 00"
sam = "virtual pcd 00 01"
"""


@dataclass(frozen=True)
class Mistake:
    """A broken file: how to break the base, and the lines the error must contain."""

    edit: Callable[[str, Path], str | bytes]
    lines: tuple[str, ...]
    """One per problem, in order: how the line goes on after "FILE: "."""
    also: tuple[str, ...] = ()
    """Further text the report must contain."""
    secrets_only: bool = False
    """Only found when secrets are read: `check-config --secrets` and `run`."""
    env: dict[str, str | None] = field(default_factory=dict)


def _replace(old: str, new: str) -> Callable[[str, Path], str]:
    def edit(text: str, _: Path) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


def _append(extra: str) -> Callable[[str, Path], str]:
    return lambda text, _: text + extra


def _drop_bus(text: str, _: Path) -> str:
    return text.split("[bus]")[0] + "[readers.pcsc]" + text.split("[readers.pcsc]")[1]


def _drop_terminal(text: str, _: Path) -> str:
    return text[text.index("[bus]") :]


def _missing_key_file(text: str, tmp: Path) -> str:
    return re.sub(r'token_key = "file:[^"]+"', f'token_key = "file:{tmp / "absent.key"}"', text)


def _unreadable_hmac_key(text: str, tmp: Path) -> str:
    return text + f'\n[uplink.http]\nenabled = true\nurl = "https://bo.example/taps"\nhmac_key_file = "{tmp}/absent"\n'


def _not_utf8(text: str, _: Path) -> bytes:
    return b"# Gr\xfc\xdfe aus der Werkstatt\n" + text.encode()


MISTAKES: dict[str, Mistake] = {
    "missing profile section": Mistake(
        _drop_bus, ("bus: required section is missing for terminal.profile = 'bus'; expected a table (keys line, fare",)
    ),
    "missing terminal section": Mistake(
        _drop_terminal, ("terminal: required section is missing; expected a table (keys id, profile, token_key",)
    ),
    "missing key": Mistake(
        _replace("fare = 200\n", ""),
        ("bus.fare: required key is missing; expected an integer, greater than 0 and at most 100000",),
    ),
    "wrong type": Mistake(
        _replace("fare = 200", 'fare = "200"'),
        ("bus.fare: must be an integer, greater than 0 and at most 100000 (got '200')",),
    ),
    "wrong type of a flag": Mistake(
        _append('\n[uplink.mqtt]\nenabled = "yes"\n'), ("uplink.mqtt.enabled: must be true or false (got 'yes')",)
    ),
    "out of range": Mistake(
        _replace("fare = 200", "fare = 0"), ("bus.fare: must be an integer, greater than 0 and at most 100000 (got 0)",)
    ),
    "out of range port": Mistake(
        _append("\n[uplink.mqtt]\nport = 70000\n"),
        ("uplink.mqtt.port: must be an integer, greater than 0 and less than 65536",),
    ),
    "unknown key": Mistake(
        _replace("fare = 200", "fare = 200\nfair = 300"),
        ("bus.fair: unknown key; allowed here: line, fare, accepted_regions, passback_seconds",),
    ),
    "unknown section": Mistake(
        _append("\n[uplinks.http]\nenabled = true\n"),
        ("uplinks: unknown section; allowed here: terminal, bus, library, pharmacy, canteen, venue, api, readers",),
    ),
    "bad reader pattern": Mistake(
        _replace('contactless = "virtual pcd 00 00"', 'contactless = "virtual (pcd"'),
        ("readers.pcsc.contactless: not a regular expression: missing ), unterminated subpattern",),
        ("expected a regular expression",),
    ),
    "both uplinks enabled": Mistake(
        _append('\n[uplink.http]\nenabled = true\nurl = "https://bo.example/taps"\n\n[uplink.mqtt]\nenabled = true\n'),
        ("uplink: enable either uplink.http or uplink.mqtt, not both",),
    ),
    "secret inline": Mistake(
        lambda text, _: re.sub(r'token_key = "[^"]+"', f'token_key = "{INLINE_SECRET}"', text),
        ("terminal.token_key: must be a reference to the secret, 'file:/absolute/path' or 'credential:NAME'",),
    ),
    "secret inline in a key file setting": Mistake(
        _append(
            f'\n[uplink.http]\nenabled = true\nurl = "https://bo.example/taps"\nhmac_key_file = "{INLINE_SECRET}"\n'
        ),
        ("uplink.http.hmac_key_file: must be an absolute path to the file holding the secret",),
    ),
    "unreadable secret": Mistake(
        _missing_key_file, ("terminal.token_key: file:",), ("cannot read the secret: No such file or directory",), True
    ),
    "unreadable uplink key": Mistake(
        _unreadable_hmac_key, ("uplink.http.hmac_key_file: file:",), ("No such file or directory",), True
    ),
    "no credentials directory": Mistake(
        lambda text, _: re.sub(r'token_key = "[^"]+"', 'token_key = "credential:sscard.card-token-key"', text),
        ("terminal.token_key: credential:sscard.card-token-key: $CREDENTIALS_DIRECTORY is not set",),
        ("LoadCredential=sscard.card-token-key",),
        True,
        {"CREDENTIALS_DIRECTORY": None},
    ),
    "not TOML": Mistake(
        _replace("fare = 200", "fare = = 200"), ("not valid TOML: Invalid value (at line 9, column 8)",)
    ),
    "not UTF-8": Mistake(_not_utf8, ("not UTF-8 text at byte 4; the file must be UTF-8 TOML",)),
    "several problems": Mistake(
        lambda text, _: (
            text.replace("fare = 200", "fare = -5").replace('id = "TEST-BUS-01"', 'id = "bus 1"')
            + "\n[queue]\nmax_tap = 10\n"
        ),
        ("terminal.id: must be 1 to 64 letters, digits", "bus.fare: must be an integer", "queue.max_tap: unknown key"),
    ),
}


def _write(tmp_path: Path, mistake: Mistake) -> Path:
    key = tmp_path / "token.key"
    key.write_text(secrets.token_hex(32))
    (tmp_path / "state").mkdir(exist_ok=True)
    content = mistake.edit(BASE.format(state=tmp_path / "state", key=key), tmp_path)
    path = tmp_path / "terminal.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _assert_lines(stderr: str, path: Path, mistake: Mistake) -> None:
    assert "Traceback" not in stderr
    assert INLINE_SECRET not in stderr, "a secret written inline must not be echoed"
    lines = stderr.splitlines()
    assert len(lines) == len(mistake.lines), f"one line per problem: {lines}"
    for line, expected in zip(lines, mistake.lines, strict=True):
        assert line.startswith(f"{path}: {expected}"), line
    assert all(part in stderr for part in mistake.also), stderr


def _environment(mistake: Mistake, monkeypatch: pytest.MonkeyPatch | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in mistake.env.items():
        if value is None:
            env.pop(name, None)
            if monkeypatch is not None:
                monkeypatch.delenv(name, raising=False)
        else:
            env[name] = value
            if monkeypatch is not None:
                monkeypatch.setenv(name, value)
    return env


# ---------------------------------------------------------------------- the examples


# The files an example names that an installation puts in place (not on a test machine).
INSTALLED_FILES = {"bus.toml": ("uplink.mqtt.tls.ca_file", "uplink.mqtt.tls.client_cert_file")}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_validates(
    example: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Valid, and checked against this machine: only the certificates an install adds are missing."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    config = load_config(example)
    status = main(["check-config", str(example)])
    captured = capsys.readouterr()
    missing = INSTALLED_FILES.get(example.name, ())
    if not missing:
        assert status == 0, captured.err
        assert captured.out == f"{example}: ok ({config.terminal.profile} terminal {config.terminal.id})\n"
    else:
        assert status == EX_CONFIG and captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == len(missing), lines
        for line, key in zip(lines, missing, strict=True):
            assert re.fullmatch(
                rf"{re.escape(str(example))}: {key}: cannot read /etc/sscard/\S+: No such file or directory", line
            )
    assert getattr(config, config.terminal.profile) is not None
    # Secrets are referenced, never written in: credentials, or files under a credentials directory.
    for key, ref in secret_references(config):
        assert ref.startswith(("credential:", "file:/")), key


def test_the_examples_cover_every_terminal_kind() -> None:
    assert {path.name for path in EXAMPLES} >= {"bus.toml", "library.toml", "pharmacy.toml", "demo.toml"}


def _credentials(ref: str) -> str | None:
    if ref.startswith("credential:"):
        return ref.removeprefix("credential:")
    match = CREDENTIAL_PATH.match(ref.removeprefix("file:"))
    return match.group(1) if match else None


@pytest.mark.parametrize("example", [p for p in EXAMPLES if p.name != "demo.toml"], ids=lambda path: path.name)
def test_secrets_check_names_every_missing_credential(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine without the credentials, --secrets lists each one the example needs, by name."""
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert main(["check-config", "--secrets", str(example)]) == EX_CONFIG
    lines = capsys.readouterr().err.splitlines()
    needed = {key: _credentials(ref) for key, ref in secret_references(load_config(example))}
    assert None not in needed.values(), f"{example.name}: a secret outside the credentials: {needed}"
    assert len(lines) >= len(needed), lines
    for line, (key, name) in zip(lines, needed.items(), strict=False):
        assert line.startswith(f"{example}: {key}: "), line
        assert f"LoadCredential={name}" in line, line
    # Then the certificates the uplink loads with its key (not installed on a test machine).
    for line in lines[len(needed) :]:
        assert re.match(rf"{re.escape(str(example))}: \S+\.tls\.(ca_file|client_cert_file): cannot read /", line), line


def test_the_unit_loads_every_credential_the_examples_use() -> None:
    loaded = set(re.findall(r"^LoadCredential(?:Encrypted)?=([^:\s]+)", UNIT.read_text(), re.MULTILINE))
    used = {
        name
        for example in EXAMPLES
        if example.name != "demo.toml"
        for _, ref in secret_references(load_config(example))
        if (name := _credentials(ref)) is not None
    }
    assert used <= loaded, f"used by config/ but not loaded by {UNIT.name}: {sorted(used - loaded)}"


# ---------------------------------------------------------------------- every secret, by name

SECRETS_CONFIG = {
    "http": """
[api]
listen = "127.0.0.1:8787"
token = "credential:sscard.api-token"

[uplink.http]
enabled = true
url = "https://bo.example/taps"
hmac_key_file = "{creds}/sscard.uplink-hmac-key"

[uplink.http.tls]
client_cert_file = "{tmp}/terminal.pem"
client_key_file = "{creds}/sscard.tls-client-key"
""",
    "mqtt": """
[uplink.mqtt]
enabled = true
username = "terminal"
password_file = "{creds}/sscard.mqtt-password"

[uplink.mqtt.tls]
client_cert_file = "{tmp}/terminal.pem"
client_key_file = "{creds}/sscard.tls-client-key"
""",
}
SECRET_KEYS = {
    "http": {
        "terminal.token_key": "sscard.card-token-key",
        "api.token": "sscard.api-token",
        "uplink.http.hmac_key_file": "sscard.uplink-hmac-key",
        "uplink.http.tls.client_key_file": "sscard.tls-client-key",
    },
    "mqtt": {
        "terminal.token_key": "sscard.card-token-key",
        "uplink.mqtt.password_file": "sscard.mqtt-password",
        "uplink.mqtt.tls.client_key_file": "sscard.tls-client-key",
    },
}
SECRET_CASES = [(uplink, key) for uplink, keys in SECRET_KEYS.items() for key in (None, *keys)]


@pytest.mark.parametrize(
    ("uplink", "missing"), SECRET_CASES, ids=[f"{u}-{k or 'all present'}" for u, k in SECRET_CASES]
)
def test_secrets_check_reads_every_secret(
    uplink: str,
    missing: str | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (tmp_path / "state").mkdir()
    for key, name in SECRET_KEYS[uplink].items():
        if key != missing:
            (creds / name).write_text(secrets.token_hex(16) + "\n")
    (tmp_path / "terminal.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = BASE.format(state=tmp_path / "state", key="unused").replace(
        'token_key = "file:unused"', 'token_key = "credential:sscard.card-token-key"'
    )
    path = tmp_path / "terminal.toml"
    path.write_text(text + SECRETS_CONFIG[uplink].format(creds=creds, tmp=tmp_path), encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    assert main(["check-config", str(path)]) == 0, "without --secrets nothing is read"
    capsys.readouterr()
    status = main(["check-config", "--secrets", str(path)])
    err = capsys.readouterr().err
    if missing is None:
        assert status == 0 and err == ""
        return
    name = SECRET_KEYS[uplink][missing]
    assert status == EX_CONFIG
    assert err.startswith(f"{path}: {missing}: ") and err.count("\n") == 1, err
    assert f"{name}" in err and f"LoadCredential={name}" in err and "No such file or directory" in err, err


def test_secrets_check_looks_at_the_certificates_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uplink loads its CA and client certificate at start: a missing one is named before."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "state").mkdir()
    key = tmp_path / "token.key"
    key.write_text(secrets.token_hex(32))
    (tmp_path / "client.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    path = tmp_path / "terminal.toml"
    path.write_text(
        BASE.format(state=tmp_path / "state", key=key)
        + f"""
[uplink.http]
enabled = true
url = "https://bo.example/taps"

[uplink.http.tls]
ca_file = "{tmp_path}/ca.pem"
client_cert_file = "{tmp_path}/terminal.pem"
client_key_file = "{tmp_path}/client.key"
""",
        encoding="utf-8",
    )
    assert main(["check-config", "--secrets", str(path)]) == EX_CONFIG
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: uplink.http.tls.ca_file: cannot read {tmp_path}/ca.pem: No such file or directory",
        f"{path}: uplink.http.tls.client_cert_file: cannot read {tmp_path}/terminal.pem: No such file or directory",
    ]


def test_an_empty_secret_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, Mistake(lambda text, _: text, ()))
    (tmp_path / "token.key").write_text("\n")
    assert main(["check-config", "--secrets", str(path)]) == EX_CONFIG
    assert (
        capsys.readouterr().err == f"{path}: terminal.token_key: file:{tmp_path / 'token.key'}: the secret is empty\n"
    )


# ---------------------------------------------------------------------- every kind of mistake


@pytest.mark.parametrize("name", MISTAKES)
def test_check_config_reports_the_mistake(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mistake = MISTAKES[name]
    path = _write(tmp_path, mistake)
    _environment(mistake, monkeypatch)
    if mistake.secrets_only:
        assert main(["check-config", str(path)]) == 0
        capsys.readouterr()
    args = ["check-config", "--secrets", str(path)] if mistake.secrets_only else ["check-config", str(path)]
    assert main(args) == EX_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_lines(captured.err, path, mistake)


class DaemonMustNotStart:
    """Stands in for the daemon in `sscard run`: a configuration mistake must stop it before."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("sscard run went on to start the daemon with a broken configuration")


@pytest.mark.parametrize("name", MISTAKES)
def test_run_refuses_the_mistake(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sscard run` reads every secret it will use before it opens anything: no --secrets needed."""
    mistake = MISTAKES[name]
    path = _write(tmp_path, mistake)
    _environment(mistake, monkeypatch)
    monkeypatch.setattr(reader.commands.run, "Daemon", DaemonMustNotStart)
    assert main(["run", "--config", str(path)]) == EX_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_lines(captured.err, path, mistake)
    assert not any((tmp_path / "state").iterdir()), "nothing is created in the state directory"


AS_PROCESSES = ("not UTF-8", "wrong type", "no credentials directory")


def test_the_commands_exit_78_as_processes(tmp_path: Path) -> None:
    """The installed commands, as the unit starts them (started together: they only parse)."""
    started = []
    for number, name in enumerate(AS_PROCESSES):
        mistake = MISTAKES[name]
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        path = _write(folder, mistake)
        env = _environment(mistake)
        for command in (["run", "--config", str(path)], ["check-config", "--secrets", str(path)]):
            process = subprocess.Popen(
                [str(SSCARD), *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            started.append((name, command[0], path, mistake, process))
    try:
        for name, verb, path, mistake, process in started:
            out, err = process.communicate(timeout=60)
            assert (process.returncode, out) == (EX_CONFIG, ""), f"{verb} / {name}: {err}"
            _assert_lines(err, path, mistake)
    finally:
        for *_, process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_missing_file_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    assert main(["check-config", str(path)]) == EX_CONFIG
    assert capsys.readouterr().err == f"{path}: cannot read: No such file or directory\n"


def test_a_file_that_is_no_certificate_is_refused_before_the_uplink_loads_it(tmp_path: Path) -> None:
    """Once only found when the uplink loaded it at start; now check-config names it, and run alike."""
    (tmp_path / "state").mkdir()
    key = tmp_path / "token.key"
    key.write_text(secrets.token_hex(32))
    (tmp_path / "terminal.pem").write_text("not a certificate\n")
    path = tmp_path / "terminal.toml"
    path.write_text(
        BASE.format(state=tmp_path / "state", key=key)
        + f'\n[uplink.http]\nenabled = true\nurl = "https://bo.example/taps"\n\n'
        f'[uplink.http.tls]\nclient_cert_file = "{tmp_path}/terminal.pem"\n',
        encoding="utf-8",
    )
    expected = (
        f"{path}: uplink.http.tls.client_cert_file: {tmp_path}/terminal.pem holds no certificate:"
        " expected PEM text with -----BEGIN CERTIFICATE-----"
    )
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = subprocess.run([str(SSCARD), *command], capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode, result.stdout, result.stderr.splitlines()) == (EX_CONFIG, "", [expected])
