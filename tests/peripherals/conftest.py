"""Fixtures for the serial peripheral tests (helpers live in pty_peripherals)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peripherals.pty_peripherals import PtyDevice


@pytest.fixture
def pty_device(tmp_path: Path) -> Iterator[PtyDevice]:
    device = PtyDevice(tmp_path / "ttyPERIPH")
    device.plug()
    yield device
    device.unplug()
