"""`sscard example-unit [NAME]`: print the systemd unit, or another shipped systemd file.

The unit is what `systemctl` runs (`sscard example-unit > /etc/systemd/system/sscard.service`);
the other files are for NFC readers driven by nfcpy: the udev rule and the modprobe files
that keep the kernel's NFC drivers off the reader. `--list` names them all.
"""

from __future__ import annotations

import argparse
import sys

from reader.resources import UNIT_NAME, ResourceMissing, systemd_file, systemd_files


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "example-unit",
        help="print the systemd unit (or another shipped systemd, udev or modprobe file)",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("name", metavar="NAME", nargs="?", default=UNIT_NAME, help=f"which file (default {UNIT_NAME})")
    parser.add_argument("--list", action="store_true", help="list the shipped files instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.list:
            print("\n".join(systemd_files()))
            return 0
        text = systemd_file(args.name)
    except ResourceMissing as error:
        print(f"sscard example-unit: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"sscard example-unit: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
