"""A pytest plugin for `make mutation`: each run takes the bench lock only if it uses pcscd.

The bench has one pcscd with vpcd on fixed ports, shared by every test run on the machine,
and `flock /tmp/sscard-pcscd.lock` is how runs take turns. A mutation run starts one pytest
run per mutant; holding the lock for the whole of it would shut every other run out for an
hour, and taking it for mutants that only run pure tests would make them wait for nothing.
So the lock is taken when the `pcscd` fixture is first set up, and released when
that pytest run ends. A caller that already holds the lock for a whole short mutation run
(`flock /tmp/sscard-pcscd.lock mutmut run NAMES`) sets SSCARD_PCSCD_LOCK_HELD=1: a second
flock(2) from a child process would wait on the parent's lock for ever.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Generator
from typing import Any

import pytest

LOCK_PATH = "/tmp/sscard-pcscd.lock"

_held: int | None = None


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Generator[None]:
    """Block on the bench lock (the same flock(2) lock as flock(1)) before pcscd starts."""
    global _held
    if fixturedef.argname == "pcscd" and _held is None and not os.environ.get("SSCARD_PCSCD_LOCK_HELD"):
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held = fd
    yield


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Let the next run have the bench once this one's fixtures (pcscd included) are torn down."""
    global _held
    if _held is not None:
        fd, _held = _held, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
