"""Crash points: the daemon kills itself at a named durable step, for the crash tests only.

A failure path is only known to work once it has been made to happen. The crash tests set
`SSCARD_CRASH_AT` in the environment of a daemon they start, and the process SIGKILLs
itself the moment it reaches that step, exactly as a power cut or the OOM killer would
stop it: no `finally`, no flush, no atexit. The test then restarts the daemon and checks
the card's own state against the records (the technique of SQLite's crash tests).

    SSCARD_CRASH_AT=record_committed        # the first time the step is reached
    SSCARD_CRASH_AT=record_committed:3      # the third time

Nothing sets the variable outside the tests; unset, `crash_point` costs one comparison.
"""

from __future__ import annotations

import enum
import os
import signal

ENVIRONMENT_VARIABLE = "SSCARD_CRASH_AT"


class CrashPoint(enum.StrEnum):
    """The durable steps of a charged tap, in the order a tap reaches them."""

    JOURNAL_WRITTEN = "journal_written"
    """The pending debit is on disk; DEBIT FOR PURCHASE is about to be sent."""
    DEBIT_ANSWERED = "debit_answered"
    """The card's answer to DEBIT arrived and has not been looked at yet."""
    MAC2_VERIFIED = "mac2_verified"
    """The PSAM has answered VERIFY MAC2."""
    RECORD_COMMITTED = "record_committed"
    """The tap record is committed to the queue; the journal still holds the debit."""
    JOURNAL_CLEARED = "journal_cleared"
    """The journal entry is cleared; the person has not been told yet."""


def _armed(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    CrashPoint(name)  # a misspelt point is an error in the test, not a silent no-op
    return name, int(count) if count else 1


_ARMED = _armed(os.environ.get(ENVIRONMENT_VARIABLE))
_reached: dict[str, int] = {}


def crash_points_armed() -> bool:
    """Whether this process runs under a crash test (the tap path then wraps its transmits)."""
    return _ARMED is not None


def crash_point(point: CrashPoint) -> None:
    """SIGKILL this process if the tests armed `point` and this is the armed occurrence."""
    if _ARMED is None or _ARMED[0] != point.value:
        return
    _reached[point.value] = _reached.get(point.value, 0) + 1
    if _reached[point.value] == _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
