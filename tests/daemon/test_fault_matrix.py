"""A slice of the crash-point and fault matrix (matrix.py) through pcscd, vpcd and `sscard run`.

Each fault kind and each crash point appears at least once, at the commands where money is
at stake (INITIALIZE, MAC1, UPDATE CAPP DATA CACHE, DEBIT, VERIFY MAC2) and at two of the
reads before them; plus a clone's MAC1 refused at DEBIT, a card in its overdraft, and a full
disk. The whole matrix and the random kills run under `make crashtest` (bench/crashtest.py).
The money invariants are judged against the virtual card's own memory, never the daemon's.
"""

from __future__ import annotations

import pytest

from sscard_sim.faults import FaultyChip
from sscard_sim.pcscd import PcscdBench
from tests.daemon import matrix
from tests.daemon.matrix import Case, Point

SLICE = (
    "card-debit_1-tear_after-gone",
    "card-debit_1-tear_before-returns",
    "card-debit_1-one_byte-returns",
    "card-debit_1-truncated-gone",
    "card-debit_1-overlong-returns",
    "card-debit_1-executed_status-gone",
    "card-debit_1-late-returns",
    "card-initialize_1-status-returns",
    "card-update_capp_1-tear_after-returns",
    "card-read_record_4-truncated-returns",
    "card-external_auth_1-status-returns",
    "psam-mac1_1-one_byte-returns",
    "psam-verify_mac2_1-tear_before-returns",
    "psam-verify_mac2_1-executed_status-returns",
    "crash-journal_written-returns",
    "crash-debit_sent-returns",
    "crash-debit_answered-gone",
    "crash-mac2_verified-returns",
    "crash-record_committed-returns",
    "crash-record_committed-gone",
    "crash-journal_cleared-returns",
    "card-debit-status_9302-gone",
    "card-debit-status_9302-returns",
    "psam-mac2-status_9302-returns",
    "psam-mac2-status_9302-gone",
    "overdraft-returns",
    "disk_full-returns",
    "disk_full_after_tear-gone",
)
"""Every fault kind and crash point at least once; 28 cases, about three minutes."""


@pytest.fixture(scope="module")
def points(psam: FaultyChip, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Point], list[Point]]:
    """The commands a clean bus tap sends to the card and to the PSAM, traced on the bench."""
    return matrix.trace_clean_tap(tmp_path_factory.mktemp("trace"), psam)


@pytest.fixture(scope="module")
def cases(points: tuple[list[Point], list[Point]]) -> dict[str, Case]:
    return {case.id: case for case in matrix.all_cases(*points)}


@pytest.fixture(scope="module")
def runner(psam: FaultyChip, pcscd: PcscdBench, tmp_path_factory: pytest.TempPathFactory) -> matrix.Runner:
    return matrix.Runner(tmp_path_factory.mktemp("matrix"), psam)


def test_the_points_are_every_command_of_a_bus_tap(points: tuple[list[Point], list[Point]]) -> None:
    """The purchase's own commands are there, in order, after the reads (SSSE and T-Union)."""
    card, psam = points
    card_ins = [p.ins for p in card]
    assert card_ins[-3:] == [matrix.INS_INITIALIZE, matrix.INS_UPDATE_CAPP, matrix.INS_DEBIT]
    assert matrix.INS_EXTERNAL_AUTH in card_ins and matrix.INS_READ_RECORD in card_ins
    psam_ins = [p.ins for p in psam]
    assert psam_ins.index(matrix.INS_PSAM_MAC1) < psam_ins.index(matrix.INS_PSAM_MAC2) == len(psam_ins) - 1
    assert len({(p.side, p.ins, p.occurrence) for p in card + psam}) == len(card) + len(psam)


def test_the_slice_has_every_fault_kind_and_crash_point(cases: dict[str, Case]) -> None:
    chosen = [cases[name] for name in SLICE]
    kinds = {case.fault.kind for case in chosen if case.fault is not None}
    assert set(matrix.FAULT_KINDS) <= kinds
    crashes = {case.name.removeprefix("crash-") for case in chosen if case.name.startswith("crash-")}
    assert crashes == set(matrix.CRASH_POINTS)


@pytest.mark.parametrize("name", SLICE)
def test_money_never_goes_wrong(name: str, cases: dict[str, Case], runner: matrix.Runner) -> None:
    case = cases[name]
    if (case.disk_full or case.fill_after_fault) and not matrix.can_mount_tmpfs():
        pytest.skip("a full disk is made with a tmpfs, which needs root")
    verdict = runner.run(case)
    assert verdict.ok, verdict.summary()
