"""Malformed configurations, each through `sscard check-config` and `sscard run` as processes.

Every one must end with exit status 78 and exactly one line on stderr that names the file,
the key and what is allowed, never a traceback; `run` must refuse before it opens a reader
(nothing appears in the state directory, and the readers are vpcd slots nobody serves, so
a run that went on would hang until the timeout instead of exiting 78).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from reader.config import EX_CONFIG

SSCARD = Path(sys.executable).with_name("sscard")

BASE = """\
[terminal]
id = "TEST-BUS-01"
profile = "bus"
state_dir = "{state}"
token_key = "file:{key}"
timezone = "Asia/Shanghai"

[bus]
line = "812"
fare = 200
accepted_regions = ["51", "50"]
tearing_window_seconds = 30

[readers.pcsc]
contactless = "virtual pcd 00 00"
sam = "virtual pcd 00 01"
"""


HOTLIST_KEY = 'public_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"'
"""A valid Ed25519 public key (RFC 8032 test 1): a hotlist source needs one."""


@dataclass(frozen=True)
class Case:
    """How to break the base file, and the start of the one line after "FILE: "."""

    old: str
    new: str
    line: str

    def apply(self, text: str) -> str:
        if self.old == "":
            return text + "\n" + self.new + "\n"
        assert self.old in text, self.old
        return text.replace(self.old, self.new, 1)


def tearing(value: str) -> Case:
    return Case(
        "tearing_window_seconds = 30", f"tearing_window_seconds = {value}", "bus.tearing_window_seconds: must be"
    )


def append(section: str, line: str) -> Case:
    return Case("", section, line)


NESTED = "[" * 2000 + "]" * 2000

CASES: dict[str, Case] = {
    # Non-finite numbers, everywhere in the model.
    "tearing window inf": tearing("inf"),
    "tearing window -inf": tearing("-inf"),
    "tearing window nan": tearing("nan"),
    "passback inf": Case(
        "tearing_window_seconds = 30",
        "tearing_window_seconds = 30\npassback_seconds = inf",
        "bus.passback_seconds: must be a finite number",
    ),
    "fare inf": Case("fare = 200", "fare = inf", "bus.fare: must be an integer"),
    "queue busy timeout nan": append("[queue]\nbusy_timeout_s = nan", "queue.busy_timeout_s: must be a finite number"),
    "mqtt connect timeout inf": append(
        "[uplink.mqtt]\nconnect_timeout_s = inf", "uplink.mqtt.connect_timeout_s: must be a finite number"
    ),
    "backoff multiplier nan": append(
        "[uplink.http.backoff]\nmultiplier = nan", "uplink.http.backoff.multiplier: must be a finite number"
    ),
    "pcsc transmit timeout inf": Case(
        'sam = "virtual pcd 00 01"',
        'sam = "virtual pcd 00 01"\ntransmit_timeout = inf',
        "readers.pcsc.transmit_timeout: must be a finite number",
    ),
    "gate seconds nan in holder section": Case(
        'profile = "bus"', 'profile = "library"', "library.gate_open_seconds: must be a finite number"
    ),
    # Absurd numbers.
    "tearing window a year": tearing("31536000"),
    "tearing window zero": tearing("0"),
    "passback a week": Case(
        "tearing_window_seconds = 30",
        "tearing_window_seconds = 30\npassback_seconds = 604800",
        "bus.passback_seconds: must be a number, at least 0 and at most 86400",
    ),
    "transfer window ten days": Case(
        "tearing_window_seconds = 30",
        "tearing_window_seconds = 30\ntransfer_window_minutes = 14400",
        "bus.transfer_window_minutes: must be a number, at least 0 and at most 1440",
    ),
    "transfer discount a fortune": Case(
        "fare = 200", "fare = 200\ntransfer_discount = 10000000", "bus.transfer_discount: must be an integer"
    ),
    "queue busy timeout 1e300": append("[queue]\nbusy_timeout_s = 1e300", "queue.busy_timeout_s: must be a number"),
    "http read timeout a day": append(
        "[uplink.http]\nread_timeout_s = 86400.0",
        "uplink.http.read_timeout_s: must be a number, greater than 0 and at most 600",
    ),
    "pcsc connect timeout an hour": Case(
        'sam = "virtual pcd 00 01"',
        'sam = "virtual pcd 00 01"\nconnect_timeout = 3600.0',
        "readers.pcsc.connect_timeout: must be a number, greater than 0 and at most 600",
    ),
    "mqtt keepalive beyond the protocol": append(
        "[uplink.mqtt]\nkeepalive_s = 100000",
        "uplink.mqtt.keepalive_s: must be an integer, at least 5 and at most 65535",
    ),
    "mqtt session expiry beyond the protocol": append(
        "[uplink.mqtt]\nsession_expiry_s = 5000000000", "uplink.mqtt.session_expiry_s: must be an integer"
    ),
    "backoff max a year": append("[hotlist.backoff]\nmax_s = 31536000.0", "hotlist.backoff.max_s: must be a number"),
    "queue max taps beyond 64 bits": append(
        "[queue]\nmax_taps = 99999999999999999999999", "queue.max_taps: must be an integer"
    ),
    "fare negative": Case("fare = 200", "fare = -200", "bus.fare: must be an integer, greater than 0"),
    "band age 200": append('[[bus.bands]]\nname = "x"\nmin_age = 200\npercent = 50', "bus.bands.0.min_age: must be"),
    "band percent 101": append(
        '[[bus.bands]]\nname = "x"\nmin_age = 60\npercent = 101', "bus.bands.0.percent: must be"
    ),
    "psam key index 256": Case("fare = 200", "fare = 200\npsam_key_index = 256", "bus.psam_key_index: must be"),
    # Ports.
    "api port 99999": append(
        '[api]\nlisten = "127.0.0.1:99999"\ntoken = "file:{key}"', "api.listen: the port must be 1 to 65535"
    ),
    "api port 0": append(
        '[api]\nlisten = "127.0.0.1:0"\ntoken = "file:{key}"', "api.listen: the port must be 1 to 65535"
    ),
    "api not loopback": append(
        '[api]\nlisten = "0.0.0.0:8787"\ntoken = "file:{key}"',
        "api.listen: must be 'unix:/path/to/socket' or a loopback",
    ),
    "mqtt port 0": append("[uplink.mqtt]\nport = 0", "uplink.mqtt.port: must be an integer"),
    "mqtt port 65536": append("[uplink.mqtt]\nport = 65536", "uplink.mqtt.port: must be an integer"),
    "http url port 99999": append(
        '[uplink.http]\nenabled = true\nurl = "https://bo.example:99999/taps"',
        "uplink.http.url: must be an http(s) URL",
    ),
    # Paths of the wrong kind.
    "state_dir a file": Case('state_dir = "{state}"', 'state_dir = "{file}"', "terminal.state_dir: {file} is a file"),
    "state_dir under a file": Case(
        'state_dir = "{state}"', 'state_dir = "{file}/state"', "terminal.state_dir: {file}/state cannot be created"
    ),
    "state_dir relative": Case(
        'state_dir = "{state}"', 'state_dir = "state"', "terminal.state_dir: must be an absolute"
    ),
    "queue path a directory": append('[queue]\npath = "{folder}"', "queue.path: {folder} is a directory"),
    "hotlist path under a file": append('[hotlist]\npath = "{file}/hotlist.bin"', "hotlist.path: the directory {file}"),
    "api socket is a file": append(
        '[api]\nlisten = "unix:{file}"\ntoken = "file:{key}"', "api.listen: unix:{file} is a file"
    ),
    "api socket under a file": append(
        '[api]\nlisten = "unix:{file}/api.sock"\ntoken = "file:{key}"',
        "api.listen: the directory {file} is a file",
    ),
    "ca file missing": append(
        '[uplink.http]\nenabled = true\nurl = "https://bo.example/taps"\n[uplink.http.tls]\nca_file = "{tmp}/ca.pem"',
        "uplink.http.tls.ca_file: cannot read {tmp}/ca.pem: No such file or directory",
    ),
    "ca file a directory": append(
        '[uplink.http]\nenabled = true\nurl = "https://bo.example/taps"\n[uplink.http.tls]\nca_file = "{folder}"',
        "uplink.http.tls.ca_file: {folder} is a directory",
    ),
    "ca file not PEM": append(
        '[uplink.http]\nenabled = true\nurl = "https://bo.example/taps"\n[uplink.http.tls]\nca_file = "{file}"',
        "uplink.http.tls.ca_file: {file} holds no usable CA certificate",
    ),
    "client certificate missing": append(
        '[uplink.mqtt]\nenabled = true\n[uplink.mqtt.tls]\nclient_cert_file = "{tmp}/absent.pem"\n'
        'client_key_file = "{key}"',
        "uplink.mqtt.tls.client_cert_file: cannot read {tmp}/absent.pem",
    ),
    "client certificate not a certificate": append(
        '[uplink.mqtt]\nenabled = true\n[uplink.mqtt.tls]\nclient_cert_file = "{file}"\nclient_key_file = "{key}"',
        "uplink.mqtt.tls.client_cert_file: {file} holds no certificate",
    ),
    "hotlist CA missing": append(
        '[hotlist]\nsource = "http"\nhttp_url = "https://bo.example/hotlist"\n'
        + HOTLIST_KEY
        + '\n[hotlist.tls]\nca_file = "{tmp}/x.pem"',
        "hotlist.tls.ca_file: cannot read",
    ),
    # Values the daemon would refuse only at start or at the first tap.
    "unknown timezone": Case(
        'timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus_Mons"', "terminal.timezone: must be a time zone"
    ),
    "timezone path": Case('timezone = "Asia/Shanghai"', 'timezone = "../../etc/passwd"', "terminal.timezone: must be"),
    "mqtt topic wildcard": append(
        '[uplink.mqtt]\nenabled = true\ntopic = "sscard/#"', "uplink.mqtt.topic: must be a topic to publish to"
    ),
    "mqtt topic plus": append('[uplink.mqtt]\nenabled = true\ntopic = "a/+/b"', "uplink.mqtt.topic: must be"),
    "mqtt password without username": append(
        '[uplink.mqtt]\nenabled = true\npassword_file = "{key}"', "uplink.mqtt.password_file: given without"
    ),
    "mqtt host empty": append(
        '[uplink.mqtt]\nenabled = true\nhost = ""', "uplink.mqtt.host: must be the broker's host"
    ),
    "http url without host": append(
        '[uplink.http]\nenabled = true\nurl = "https://"', "uplink.http.url: must be an http(s) URL"
    ),
    "hotlist url without host": append(
        '[hotlist]\nsource = "http"\nhttp_url = "http:///hotlist"\n' + HOTLIST_KEY,
        "hotlist.http_url: must be an http(s) URL",
    ),
    "signature header with a space": append(
        '[uplink.http]\nenabled = true\nurl = "https://bo.example/t"\nsignature_header = "X Sig"',
        "uplink.http.signature_header: must be an HTTP header name",
    ),
    "reader pattern broken": Case(
        'contactless = "virtual pcd 00 00"', 'contactless = "virtual [pcd"', "readers.pcsc.contactless: not a regular"
    ),
    # The shape of the document.
    "deeply nested array": Case('accepted_regions = ["51", "50"]', f"accepted_regions = {NESTED}", "not valid TOML"),
    "nested beyond the limit": Case(
        'accepted_regions = ["51", "50"]', "accepted_regions = " + "[" * 40 + "]" * 40, "bus.accepted_regions: nested"
    ),
    "nested tables beyond the limit": Case(
        'accepted_regions = ["51", "50"]',
        'accepted_regions = ["51"]\nx = ' + "{a = " * 40 + "1" + "}" * 40,
        "bus.x: nested",
    ),
    "wrong type in a list": Case(
        'accepted_regions = ["51", "50"]', "accepted_regions = [51]", "bus.accepted_regions.0:"
    ),
    "a date for a number": Case("fare = 200", "fare = 2024-01-01", "bus.fare: must be an integer"),
    "a table for a string": Case('line = "812"', "line = {a = 1}", "bus.line: must be"),
    "unknown profile": Case('profile = "bus"', 'profile = "tram"', "terminal.profile: must be one of"),
    "band ages twice": append(
        '[[bus.bands]]\nname = "a"\nmin_age = 60\npercent = 50\n[[bus.bands]]\nname = "b"\nmin_age = 60\npercent = 0',
        "bus.bands: two bands start at the same age",
    ),
    "a NUL byte": Case('line = "812"', 'line = "8\\u00002"', "bus.line: must be a line number"),
}


def _fill(text: str, values: dict[str, Path]) -> str:
    """The placeholders {state}, {key}, {file}, {folder}, {tmp}; other braces are TOML's."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def _text(case: Case, tmp: Path) -> str:
    values = {
        "state": tmp / "state",
        "key": tmp / "token.key",
        "file": tmp / "afile",
        "folder": tmp / "folder",
        "tmp": tmp,
    }
    case = Case(_fill(case.old, values), _fill(case.new, values), case.line)
    text = case.apply(_fill(BASE, values))
    if 'profile = "library"' in text:  # a library gate instead: [library] in place of [bus]
        text = text.split("[bus]")[0] + '[library]\naccepted_regions = ["51"]\ngate_open_seconds = nan\n'
    return text


def _prepare(name: str, tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / name.replace(" ", "-").replace("/", "-")
    folder.mkdir()
    (folder / "state").mkdir()
    (folder / "folder").mkdir()
    (folder / "afile").write_text("not a certificate\n")
    (folder / "token.key").write_text(secrets.token_hex(32))
    path = folder / "terminal.toml"
    path.write_text(_text(CASES[name], folder), encoding="utf-8")
    values = {"file": folder / "afile", "folder": folder / "folder", "tmp": folder}
    return path, _fill(CASES[name].line, values)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")}
    return subprocess.run([str(SSCARD), *command], capture_output=True, text=True, timeout=60, env=env, check=False)


def test_there_are_at_least_fifty_cases() -> None:
    assert len(CASES) >= 50


def test_every_malformed_configuration_is_one_line_and_78(tmp_path: Path) -> None:
    """All cases, both commands, as processes; run two at a time (the machine has two cores)."""
    prepared = {name: _prepare(name, tmp_path) for name in CASES}
    jobs = [
        (name, verb, path, line)
        for name, (path, line) in prepared.items()
        for verb in (["check-config", str(path)], ["run", "--config", str(path)])
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: (job, _run(job[1])), jobs))
    failures = []
    for (name, verb, path, line), result in results:
        lines = result.stderr.splitlines()
        expected = f"{path}: {line}"
        if result.returncode != EX_CONFIG or len(lines) != 1 or not lines[0].startswith(expected) or result.stdout:
            failures.append(f"{name} / {verb[0]}: exit {result.returncode}, stdout {result.stdout!r}, stderr {lines}")
        if verb[0] == "run" and any((path.parent / "state").iterdir()):
            failures.append(f"{name} / run: the state directory was written to before the refusal")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["api port 99999", "state_dir a file", "unknown timezone", "tearing window inf"])
def test_check_config_and_run_give_the_same_line(name: str, tmp_path: Path) -> None:
    path, _ = _prepare(name, tmp_path)
    check = _run(["check-config", str(path)])
    run = _run(["run", "--config", str(path)])
    assert check.stderr == run.stderr and check.returncode == run.returncode == EX_CONFIG


def test_run_needs_the_socket_directory_that_check_config_leaves_to_systemd(tmp_path: Path) -> None:
    """RuntimeDirectory= creates /run/sscard when the unit starts: absent at check time, there at start."""
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "state").mkdir()
    key = folder / "token.key"
    key.write_text(secrets.token_hex(32))
    path = folder / "terminal.toml"
    extra = f'\n[api]\nlisten = "unix:{folder}/absent/api.sock"\ntoken = "file:{key}"\n'
    path.write_text(_fill(BASE, {"state": folder / "state", "key": key}) + extra, encoding="utf-8")
    assert _run(["check-config", str(path)]).returncode == 0
    run = _run(["run", "--config", str(path)])
    assert run.returncode == EX_CONFIG and run.stdout == ""
    assert run.stderr.splitlines() == [
        (f"{path}: api.listen: the directory {folder}/absent of the socket is not there"
        " (the unit's RuntimeDirectory= creates /run/sscard; elsewhere, create it first)")
    ]
