"""Every failure the queue, the uplinks and the hotlist report, named for what went wrong."""

from __future__ import annotations

from pathlib import Path


class UplinkError(Exception):
    """Base of this package's errors."""


class TapRecordError(UplinkError, ValueError):
    """A record handed to the queue lacks what the queue needs (tap_id, terminal_id) or is not JSON."""


class DuplicateTapError(UplinkError):
    """This terminal already queued a tap with this id; ids must be unique per terminal."""

    def __init__(self, terminal_id: str, tap_id: str) -> None:
        super().__init__(f"tap {tap_id} of terminal {terminal_id} is already queued")
        self.terminal_id = terminal_id
        self.tap_id = tap_id


class OutOfServiceError(UplinkError):
    """The queue cannot record another tap; the terminal must refuse taps until this clears.

    `display_message` is short enough for a validator's display; `reason` is the machine tag
    used in logs and status.
    """

    reason = "out_of_service"
    display_message = "Out of service"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.reason}: {detail}")
        self.detail = detail


class QueueFullError(OutOfServiceError):
    """The configured bound on queued taps (count or bytes) is reached."""

    reason = "queue_full"
    display_message = "Out of service: storage full"


class DiskFullError(OutOfServiceError):
    """The file system holding the queue is full (SQLITE_FULL, ENOSPC or below the free-space reserve)."""

    reason = "disk_full"
    display_message = "Out of service: storage full"


class QueueStorageError(OutOfServiceError):
    """The database failed to record the tap for another reason (I/O error, read-only file system)."""

    reason = "storage_error"
    display_message = "Out of service: storage error"


class QueueCorruptError(UplinkError):
    """The queue file failed its integrity check (and was not moved aside, or could not be)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class QueueMissingError(UplinkError):
    """A read-only view was asked for a queue file that does not exist."""


class HotlistFormatError(UplinkError):
    """A hotlist document is truncated, unsorted, or fails its checksum; the list in force is kept."""


class HotlistFetchError(UplinkError):
    """The hotlist source could not be reached or answered something unusable."""


class UplinkConfigError(UplinkError):
    """The uplink settings cannot work (unreadable key file, bad topic template)."""


class HotlistSignatureError(HotlistFormatError):
    """A back-office hotlist document is not signed by the configured key (or no key is configured)."""


class HotlistVersionError(HotlistFormatError):
    """A hotlist document does not fit the list in force: a delta for another version, or a full
    list that is not newer. `stale` is set when the document is older than (or already part of)
    the list in force, as a retained full list is after deltas: nothing to do, not a fault."""

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale
