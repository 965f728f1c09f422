"""`sscard queue ...` against a real queue file, while a writer holds it open."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from reader.commands import queue as queue_command
from reader.uplink.queue import TapQueue
from reader.uplink.settings import QueueSettings
from tests.support.taps import tap_record


def sscard(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sscard")
    queue_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    status: int = args.func(args)
    return status


@pytest.fixture
def filled(queue: TapQueue, queue_settings: QueueSettings) -> Path:
    for n in range(12):
        queue.enqueue(tap_record(n))
    taps = queue.batch(12)
    queue.ack([taps[0].seq, taps[1].seq])
    queue.set_aside([taps[5].seq], "http 422 Unprocessable Entity: refused")
    queue.record_failure([taps[2].seq], "503 Service Unavailable")
    return queue_settings.path


def test_status(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sscard("queue", "--db", str(filled), "status") == 0
    text = capsys.readouterr().out
    assert "9 taps" in text
    assert "2 in total" in text  # delivered
    assert "503 Service Unavailable" in text
    assert "poison" in text
    assert sscard("queue", "--db", str(filled), "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["depth"], status["delivered_total"], status["poison"]) == (9, 2, 1)
    assert status["errors_total"] == 2
    assert status["oldest_age_s"] >= 0


def test_list_and_list_poison(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sscard("queue", "--db", str(filled), "list", "--limit", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # header + 3
    assert tap_record(2)["tap_id"] in lines[1]
    assert sscard("queue", "--db", str(filled), "list", "--poison") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and tap_record(5)["tap_id"] in lines[1] and "422" in lines[1]


def test_export_writes_the_records_as_json_lines(filled: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    assert sscard("queue", "--db", str(filled), "export", str(out)) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in records] == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert records[0] == tap_record(2) | {"tapped_at": records[0]["tapped_at"]}
    poison = tmp_path / "poison.jsonl"
    assert sscard("queue", "--db", str(filled), "export", "--poison", str(poison)) == 0
    assert [json.loads(line)["seq"] for line in poison.read_text().splitlines()] == [5]


def test_retry_poison_puts_taps_back_in_order(
    filled: Path, queue: TapQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sscard("queue", "--db", str(filled), "retry-poison") == 0
    assert "1 taps back in the queue, 0 still set aside" in capsys.readouterr().out
    assert [t.record()["seq"] for t in queue.iter_taps()] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_missing_queue_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "absent.sqlite3"
    assert sscard("queue", "--db", str(absent), "status") == 1
    assert "no queue" in capsys.readouterr().err
    assert sscard("queue", "--db", str(absent), "retry-poison") == 1
    assert not absent.exists()  # never created by a command that only inspects or repairs


def test_db_from_environment(filled: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSCARD_QUEUE_DB", str(filled))
    assert sscard("queue", "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["depth"] == 9
