"""Secrets referenced from the configuration by file path (HMAC keys, broker passwords)."""

from __future__ import annotations

from pathlib import Path

from reader.uplink.errors import UplinkConfigError


def read_key_file(path: Path) -> bytes:
    """A secret from a file: its bytes, without one trailing line break.

    Keys live in files (mode 0600, outside the configuration) so a configuration can be
    shared, diffed or logged without leaking them.
    """
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise UplinkConfigError(f"cannot read key file {path}: {exc}") from exc
    key = key.removesuffix(b"\n").removesuffix(b"\r")
    if not key:
        raise UplinkConfigError(f"key file {path} is empty")
    return key
