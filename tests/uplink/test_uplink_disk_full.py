"""A full disk: the queue lives on a small tmpfs that the test fills up.

Mounting needs root and a mount namespace of its own (run the suite under /work/isolate).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.uplink.errors import DiskFullError
from reader.uplink.http_uplink import HttpUplink
from reader.uplink.queue import TapQueue
from reader.uplink.settings import HttpUplinkSettings, QueueSettings
from tests.support.backoffice import BackOfficeServer
from tests.support.taps import tap_record
from tests.support.waiting import wait_until
from tests.uplink.conftest import FAST_BACKOFF


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted on a fresh directory, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (run under /work/isolate)")
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill_up(directory: Path) -> Path:
    """Write a filler file until the file system refuses more; returns the filler."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def test_full_disk_goes_out_of_service_loses_nothing_and_recovers(small_fs: Path) -> None:
    queue = TapQueue(QueueSettings(path=small_fs / "queue.sqlite3", min_free_bytes=0))
    accepted: list[str] = []
    for n in range(200):
        queue.enqueue(tap_record(n))
        accepted.append(tap_record(n)["tap_id"])
    filler = fill_up(small_fs)

    n = 200
    with pytest.raises(DiskFullError) as refused:
        while n < 100_000:  # the WAL may still have room for a few taps
            queue.enqueue(tap_record(n))
            accepted.append(tap_record(n)["tap_id"])
            n += 1
    assert refused.value.reason == "disk_full"
    assert refused.value.display_message
    assert queue.out_of_service is not None and queue.out_of_service.reason == "disk_full"
    assert queue.status().out_of_service == "disk_full"
    with pytest.raises(DiskFullError):
        queue.check_accepting()  # still full: the next passenger is turned away up front
    with pytest.raises(DiskFullError):
        queue.enqueue(tap_record(n))

    # Nothing that was accepted is lost, and the refused taps were not half-recorded.
    assert [t.tap_id for t in queue.iter_taps()] == accepted
    assert queue._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    filler.unlink()  # space comes back
    queue.check_accepting()
    assert queue.out_of_service is None
    queue.enqueue(tap_record(n))
    accepted.append(tap_record(n)["tap_id"])

    with BackOfficeServer() as backoffice:
        uplink = HttpUplink(queue, HttpUplinkSettings(enabled=True, url=backoffice.url, backoff=FAST_BACKOFF))
        uplink.start()
        assert backoffice.wait_for(len(accepted), 20)
        assert wait_until(lambda: queue.status().depth == 0, 10)
        uplink.stop()
    assert [key[1] for key in backoffice.taps] == accepted
    queue.close()


def test_sender_survives_a_full_disk_and_delivers_once_space_returns(small_fs: Path) -> None:
    queue = TapQueue(QueueSettings(path=small_fs / "queue.sqlite3", min_free_bytes=0))
    ids = []
    for n in range(300):
        queue.enqueue(tap_record(n))
        ids.append(tap_record(n)["tap_id"])
    filler = fill_up(small_fs)
    with pytest.raises(DiskFullError):
        for n in range(300, 100_000):  # use up whatever room the WAL still had
            queue.enqueue(tap_record(n))
            ids.append(tap_record(n)["tap_id"])
    with BackOfficeServer() as backoffice:
        uplink = HttpUplink(
            queue, HttpUplinkSettings(enabled=True, url=backoffice.url, batch_size=20, backoff=FAST_BACKOFF)
        )
        uplink.start()
        # The first batch reaches the back office, but deleting it needs space the disk lacks.
        assert wait_until(lambda: uplink.stats().failures >= 3, 10)
        assert "full" in (uplink.stats().last_error or "")
        assert queue.status().depth == len(ids)
        filler.unlink()
        assert backoffice.wait_for(len(ids), 20)
        assert wait_until(lambda: queue.status().depth == 0, 10)
        assert uplink.is_alive()
        uplink.stop()
    assert backoffice.duplicates > 0  # batches sent again after their delete failed
    assert [key[1] for key in backoffice.taps] == ids
    queue.close()


def test_free_space_reserve_refuses_before_sqlite_runs_out(small_fs: Path) -> None:
    queue = TapQueue(QueueSettings(path=small_fs / "queue.sqlite3", min_free_bytes=512 * 1024))
    queue.enqueue(tap_record(0))
    filler = small_fs / "filler"
    st = os.statvfs(small_fs)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 256 * 1024))
    with pytest.raises(DiskFullError, match="reserve"):
        queue.check_accepting()
    with pytest.raises(DiskFullError, match="reserve"):
        queue.enqueue(tap_record(1))
    filler.unlink()
    queue.enqueue(tap_record(1))
    assert queue.out_of_service is None
    assert [t.record()["seq"] for t in queue.iter_taps()] == [0, 1]
    queue.close()
