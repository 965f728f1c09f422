"""`sscard demo` as `make demo` runs it: the console script in a process of its own.

The demo runs on the shared pcscd with the vpcd readers (it reuses the session's pcscd), its
real daemon sends every tap over HTTP to the back office it embeds, and it prints one table
line per tap and a summary. The tests read that output as an operator would, check it against
what each scripted card must come to, and check the queue file the demo leaves behind
(`--keep`) with `sscard queue status`, not only what the demo says about itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sscard_sim.commands.demo import script
from sscard_sim.pcscd import PcscdBench

SSCARD = Path(sys.executable).with_name("sscard")
RUN_TIMEOUT_S = 120.0

EXPECTED = (
    ("accepted", "ok"),  # Sichuan card
    ("denied", "already_paid"),  # the same card again at once
    ("accepted", "ok"),  # Chongqing card torn mid-debit, recovered when it comes back
    ("denied", "expired"),
    ("denied", "app_locked"),
    ("denied", "no_transport_app"),
    ("denied", "insufficient_balance"),
    ("accepted", "ok"),  # holder over 70: a free ride
    ("denied", "no_transport_app"),  # second-generation card
    ("denied", "card_not_genuine"),  # cloned card
)
"""What each scripted card must come to, in the order of the script."""

ROW = re.compile(r"^\s*(\d+)  ")
SUMMARY = re.compile(r"^Summary: (\d+) taps$")
BY_RESULT = re.compile(r"^  (accepted|denied|unconfirmed)\s+(\d+)\s+\((.*)\)$")
REVENUE = re.compile(r"^  revenue\s+(\d+\.\d\d) yuan \((\d+) paid rides, (\d+) free\)$")
UPLINK = re.compile(r"^  uplink\s+(\d+) delivered to the back office, (\d+) queued$")


@dataclass(frozen=True)
class Row:
    number: int
    card: str
    decision: str
    reason: str
    fare: str
    balance: str
    beep: str
    display: str


@dataclass(frozen=True)
class DemoRun:
    status: int
    stdout: str
    stderr: str
    state_dir: Path


def _demo(tmp: Path, *options: str) -> DemoRun:
    """Run `sscard demo --keep` with its state folder under `tmp`."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    done = subprocess.run(
        [str(SSCARD), "demo", "--keep", *options],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        check=False,
    )
    notes = done.stderr if "--json" in options else done.stdout
    match = re.search(r"state in (\S+)", notes)
    assert match, f"no state folder named:\n{done.stdout}\n{done.stderr}"
    return DemoRun(done.returncode, done.stdout, done.stderr, Path(match.group(1)))


@pytest.fixture(scope="module")
def table_run(pcscd: PcscdBench, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return _demo(tmp_path_factory.mktemp("demo-table"))


@pytest.fixture(scope="module")
def json_run(pcscd: PcscdBench, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return _demo(tmp_path_factory.mktemp("demo-json"), "--json")


def rows(stdout: str) -> list[Row]:
    """The tap lines of the table: columns are two spaces or more apart, the display last."""
    found = []
    for line in stdout.splitlines():
        if ROW.match(line):
            cells = re.split(r" {2,}", line.strip(), maxsplit=7)
            assert len(cells) == 8, f"a table line with {len(cells)} columns: {line!r}"
            number, *rest = cells
            found.append(Row(int(number), *rest))
    return found


def yuan_to_fen(text: str) -> int:
    whole, cents = text.split(".")
    return int(whole) * 100 + int(cents)


def queue_status(state_dir: Path) -> dict[str, Any]:
    """What the demo's queue file says, read by `sscard queue status`."""
    done = subprocess.run(
        [str(SSCARD), "queue", "--db", str(state_dir / "queue.sqlite3"), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    status: dict[str, Any] = json.loads(done.stdout)
    return status


# ---------------------------------------------------------------------- the table


def test_the_demo_succeeds_and_keeps_logs_out_of_the_output(table_run: DemoRun) -> None:
    assert table_run.status == 0, table_run.stdout + table_run.stderr
    assert table_run.stderr == ""
    assert not [line for line in table_run.stdout.splitlines() if line.lstrip().startswith("{")]
    log_lines = (table_run.state_dir / "demo.log").read_text().splitlines()
    events = {json.loads(line)["event"] for line in log_lines}
    assert {"daemon_ready", "tap_recorded", "backoffice_batch_accepted"} <= events


def test_one_line_per_tap_with_the_expected_decisions(table_run: DemoRun, tmp_path: Path) -> None:
    table = rows(table_run.stdout)
    titles = [step.title for step in script(tmp_path)]
    assert len(titles) == len(EXPECTED)
    assert [row.number for row in table] == list(range(1, len(EXPECTED) + 1))
    assert [(row.card, row.decision, row.reason) for row in table] == [
        (title, *expected) for title, expected in zip(titles, EXPECTED, strict=True)
    ]


def test_fares_balances_and_signals_read_as_the_rider_sees_them(table_run: DemoRun) -> None:
    sichuan, passback, torn, *_, elder, _, _ = rows(table_run.stdout)
    for row in rows(table_run.stdout):
        if row.decision == "accepted":
            assert re.fullmatch(r"\d+\.\d\d", row.fare), row
            assert row.beep == "ok"
        else:
            assert row.fare == "-" and row.beep in ("denied", "warning"), row
    assert sichuan.fare == "2.00" and sichuan.display == f"扣款 2.00 | 余额 {sichuan.balance}"
    assert passback.balance == "-", "a refused tap reads no balance: only INITIALIZE and free rides do"
    assert torn.display.startswith(f"扣款 2.00 | 余额 {torn.balance}")
    assert "请重新刷卡 Tap again (warning)" in torn.display, "the tear, then the recovered debit"
    assert (elder.fare, elder.display) == ("0.00", "免费乘车 elder | 余额 12.00")
    assert "扣款 0.00" not in table_run.stdout


def test_the_summary_matches_the_table_and_everything_was_delivered(table_run: DemoRun) -> None:
    table = rows(table_run.stdout)
    lines = table_run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if SUMMARY.match(line))
    summary = lines[start:]
    taps = int(SUMMARY.match(summary[0]).group(1))  # type: ignore[union-attr]
    assert taps == len(table)
    by_result = {m.group(1): (int(m.group(2)), m.group(3)) for line in summary if (m := BY_RESULT.match(line))}
    for result, count in Counter(row.decision for row in table).items():
        reasons = Counter(row.reason for row in table if row.decision == result)
        shown = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        assert by_result.pop(result) == (count, shown)
    assert by_result == {}
    (revenue,) = [m for line in summary if (m := REVENUE.match(line))]
    fares = [yuan_to_fen(row.fare) for row in table if row.decision == "accepted"]
    assert yuan_to_fen(revenue.group(1)) == sum(fares)
    assert (int(revenue.group(2)), int(revenue.group(3))) == (sum(f > 0 for f in fares), fares.count(0))
    (uplink,) = [m for line in summary if (m := UPLINK.match(line))]
    assert (int(uplink.group(1)), int(uplink.group(2))) == (taps, 0), "delivered = taps, queued = 0"


def test_the_queue_file_left_behind_is_empty_and_counts_every_delivery(table_run: DemoRun) -> None:
    status = queue_status(table_run.state_dir)
    assert (status["depth"], status["poison"]) == (0, 0)
    assert status["delivered_total"] == len(rows(table_run.stdout))


# ---------------------------------------------------------------------- --json


def test_json_prints_the_raw_records_instead_of_the_table(json_run: DemoRun) -> None:
    assert json_run.status == 0, json_run.stdout + json_run.stderr
    records = [json.loads(line) for line in json_run.stdout.splitlines()]
    assert [(record["result"], record["reason"]) for record in records] == list(EXPECTED)
    assert len({record["tap_id"] for record in records}) == len(records)
    assert {record["terminal_id"] for record in records} == {"DEMO-BUS-0812"}
    assert not rows(json_run.stdout)
    assert f"  uplink      {len(records)} delivered to the back office, 0 queued" in json_run.stderr.splitlines()
    assert queue_status(json_run.state_dir)["delivered_total"] == len(records)


# ---------------------------------------------------------------------- other terminal kinds

KIND_EXPECTED = {
    "canteen": (
        ("accepted", "meal_charged", "15.00"),  # Sichuan card, no band: the example's fixed price
        ("accepted", "meal_charged", "12.00"),  # holder of 78: band senior, 80 %
        ("denied", "already_paid", "-"),  # the same card at once: a double tap at the fixed price
        ("accepted", "meal_discount_used", "15.00"),  # two minutes on: the lunch discount is used
        ("denied", "insufficient_balance", "-"),
        ("denied", "expired", "-"),
        ("denied", "card_not_genuine", "-"),
    ),
    "venue": (
        ("accepted", "venue_entry", "40.00"),
        ("accepted", "venue_entry", "0.00"),  # holder of 78: band elder, free
        ("denied", "already_entered", "-"),
        ("denied", "expired", "-"),
        ("denied", "region_not_accepted", "-"),
        ("denied", "card_not_genuine", "-"),
    ),
}
"""What each scripted card of `sscard demo --kind` must come to, in the order of its script."""


@pytest.fixture(scope="module", params=sorted(KIND_EXPECTED))
def kind_run(request: pytest.FixtureRequest, pcscd: PcscdBench, tmp_path_factory: pytest.TempPathFactory) -> tuple[
    str, DemoRun
]:
    kind: str = request.param
    return kind, _demo(tmp_path_factory.mktemp(f"demo-{kind}"), "--kind", kind)


def test_a_kind_demo_shows_its_rules_and_delivers_every_tap(kind_run: tuple[str, DemoRun]) -> None:
    kind, run = kind_run
    assert run.status == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"{kind.capitalize()} terminal "), run.stdout
    table = rows(run.stdout)
    assert [(row.decision, row.reason, row.fare) for row in table] == list(KIND_EXPECTED[kind])
    assert f"uplink      {len(table)} delivered to the back office, 0 queued" in run.stdout
    assert queue_status(run.state_dir)["depth"] == 0


def test_a_kind_demo_prices_by_band_charging_only_at_the_canteen(kind_run: tuple[str, DemoRun]) -> None:
    kind, run = kind_run
    table = rows(run.stdout)
    if kind == "canteen":
        senior, _, capped = table[1], table[2], table[3]
        assert senior.display == "扣款 12.00 senior | 余额 38.00"
        assert yuan_to_fen(senior.balance) - yuan_to_fen(capped.balance) == yuan_to_fen(capped.fare)
        assert "优惠已用" in capped.display
    else:
        assert [row.display.split(" | ")[-1] for row in table[:2]] == ["票价 40.00", "免费入场 elder"]
        assert all(row.balance == "-" for row in table), "a venue gate never reads or charges the purse"


def test_the_default_demo_is_the_bus_and_kind_is_an_option() -> None:
    done = subprocess.run([str(SSCARD), "demo", "--help"], capture_output=True, text=True, timeout=30, check=True)
    assert "--kind {bus,library,pharmacy,canteen,venue}" in done.stdout
    refused = subprocess.run(
        [str(SSCARD), "demo", "--kind", "ferry"], capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode == 2 and "invalid choice" in refused.stderr
