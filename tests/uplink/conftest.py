"""Fixtures for the queue and uplink tests: a queue file, a back office, a broker, certificates."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.log import configure_logging
from reader.uplink.queue import TapQueue
from reader.uplink.settings import BackoffSettings, QueueSettings
from tests.support.backoffice import BackOfficeServer
from tests.support.mosquitto import MosquittoBroker
from tests.support.pki import Pki, make_pki

TERMINAL = "VAL-000123"
TERMINAL_PASSWORD = "s3cret-terminal"
BACKOFFICE_USER = "backoffice"
BACKOFFICE_PASSWORD = "s3cret-backoffice"

# Each terminal may publish only on its own topic; the back office reads every terminal's taps.
ACL = f"""
user {TERMINAL}
topic write taps/{TERMINAL}
topic read hotlist/#

user {BACKOFFICE_USER}
topic read taps/#
topic write hotlist/#
"""

FAST_BACKOFF = BackoffSettings(initial_s=0.05, max_s=0.4)


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    configure_logging("error")


@pytest.fixture(scope="session")
def _ram_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Queue files go to RAM when possible: fsync there is free, so the tests do not wait on a
    disk that other jobs keep busy (durability settings are checked on the connection, and a
    kill -9 does not depend on fsync)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="sscard-uplink-", dir=shm))
        yield root
        shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("queues")


@pytest.fixture
def state_dir(_ram_root: Path, tmp_path: Path) -> Path:
    """A per-test directory for queue files."""
    path = _ram_root / tmp_path.name
    path.mkdir()
    return path


@pytest.fixture
def queue_settings(state_dir: Path) -> QueueSettings:
    return QueueSettings(path=state_dir / "queue.sqlite3", min_free_bytes=0)


@pytest.fixture
def queue(queue_settings: QueueSettings) -> Iterator[TapQueue]:
    q = TapQueue(queue_settings)
    yield q
    q.close()


@pytest.fixture
def backoffice() -> Iterator[BackOfficeServer]:
    with BackOfficeServer() as server:
        yield server


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), clients=(TERMINAL,))


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[MosquittoBroker]:
    server = MosquittoBroker(
        tmp_path / "broker",
        users={TERMINAL: TERMINAL_PASSWORD, BACKOFFICE_USER: BACKOFFICE_PASSWORD},
        acl=ACL,
        pki=pki,
    )
    server.start()
    yield server
    server.close()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(TERMINAL_PASSWORD + "\n")
    path.chmod(0o600)
    return path
