"""`sscard readers`: the readers and peripherals this terminal can see, each with its state.

    sscard readers [--config FILE] [--json]

PC/SC: every reader pcscd lists, with the role the configuration gives it (contactless,
sam, or none), whether a card is in it and what kind of card the ATR says it is; a role
whose pattern matches no reader is listed as missing. NFC: the configured nfcpy device,
opened once to see whether it answers (a USB device held by pcscd or by the pn533 kernel
module is explained). Serial: the relay and the display, opened once without a byte
written. The exit status is 1 when something the configuration names is missing or
unavailable, so the command doubles as a health check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reader.backends.atr import classify_atr
from reader.backends.base import ReaderError
from reader.backends.pcsc import reader_states
from reader.backends.settings import NfcSettings, PcscSettings, ReaderSettings, SerialSettings, load_reader_settings

OK_STATES = frozenset({"present", "empty", "available", "connected", "in-use"})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("readers", help="list readers and peripherals with their state")
    parser.add_argument("--config", type=Path, help="TOML file with a [readers] table (default: built-in)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _row(backend: str, name: str, role: str | None, state: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": backend, "name": name, "role": role, "state": state}
    row.update({"atr": None, "card": None, "detail": None})
    row.update(extra)
    return row


def pcsc_rows(settings: PcscSettings) -> list[dict[str, Any]]:
    """Every PC/SC reader, plus a 'missing' row for a configured role no reader fills."""
    if not settings.enabled:
        return []
    try:
        states = reader_states()
    except ReaderError as error:
        return [_row("pcsc", "pcscd", "service", "unavailable", detail=str(error))]
    rows: list[dict[str, Any]] = []
    for state in states:
        role = settings.role_of(state.name)
        if state.unavailable:
            rows.append(_row("pcsc", state.name, role, "unavailable"))
        elif state.present:
            rows.append(
                _row(
                    "pcsc",
                    state.name,
                    role,
                    "present",
                    atr=state.atr.hex().upper(),
                    card=classify_atr(state.atr).describe(),
                )
            )
        else:
            rows.append(_row("pcsc", state.name, role, "empty"))
    filled = {row["role"] for row in rows}
    wanted = {"contactless": settings.contactless, "sam": settings.sam}
    for role, pattern in wanted.items():
        if pattern is not None and role not in filled:
            rows.append(_row("pcsc", f"/{pattern}/", role, "missing", detail="no PC/SC reader name matches"))
    return rows


def nfc_rows(settings: NfcSettings) -> list[dict[str, Any]]:
    if settings.path is None:
        return []
    from reader.backends.nfc import NfcReader  # nfcpy is only imported when a device is configured

    reader = NfcReader(settings.path)
    try:
        reader.open()
    except ReaderError as error:
        return [_row("nfc", settings.path, "contactless", "unavailable", detail=str(error))]
    else:
        return [_row("nfc", settings.path, "contactless", "available", detail=reader.device)]
    finally:
        reader.close()


def _serial_state(role: str, device: str, baudrate: int) -> dict[str, Any]:
    from reader.peripherals.link import SerialLink

    if not os.path.exists(device):
        return _row("serial", device, role, "missing", detail="no such device")
    link = SerialLink(device, name=role, baudrate=baudrate)
    try:
        opened = link.start()
    finally:
        link.close()
    if opened:
        return _row("serial", device, role, "connected")
    return _row("serial", device, role, "unavailable", detail="cannot be opened (in use or not a serial port)")


def serial_rows(settings: SerialSettings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if settings.relay is not None:
        rows.append(_serial_state("relay", settings.relay.device, settings.relay.baudrate))
    if settings.display is not None:
        rows.append(_serial_state("display", settings.display.device, settings.display.baudrate))
    return rows


def list_rows(settings: ReaderSettings) -> list[dict[str, Any]]:
    return pcsc_rows(settings.pcsc) + nfc_rows(settings.nfc) + serial_rows(settings.serial)


def healthy(rows: list[dict[str, Any]]) -> bool:
    """Every configured reader and peripheral is there (PC/SC readers with no role do not count)."""
    return all(row["state"] in OK_STATES for row in rows if row["role"] is not None or row["backend"] != "pcsc")


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no readers")
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        detail = row["card"] or row["detail"] or "-"
        atr = f"  ATR {row['atr']}" if row["atr"] else ""
        print(f"{row['backend']:<6} {row['name']:<{width}}  {row['role'] or '-':<11} {row['state']:<11} {detail}{atr}")


def _one_line(error: Exception) -> str:
    """A configuration error as one line: pydantic's own text takes one line per problem and more."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"readers.{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return str(error).replace("\n", " ")


def run(args: argparse.Namespace) -> int:
    """The table (or JSON) on stdout; why pcscd cannot be asked, on stderr as well.

    With pcscd down there is no reader to list: the table would only hold the error, which
    is no data. In JSON the row stays, for monitoring that reads the document.
    """
    try:
        settings = load_reader_settings(getattr(args, "config", None))
    except (OSError, ValueError, ValidationError) as error:
        print(f"sscard readers: cannot use the configuration: {_one_line(error)}", file=sys.stderr)
        return 2
    rows = list_rows(settings)
    service = [row for row in rows if row["role"] == "service"]
    for row in service:
        print(f"sscard readers: {row['name']}: {row['state']}: {row['detail']} (is pcscd running?)", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table([row for row in rows if row["role"] != "service"])
    return 0 if healthy(rows) else 1
