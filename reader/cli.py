"""`sscard`: the one command of sscard-terminal.

Each subcommand lives in its own module under `reader.commands` and registers itself, so
that adding a command never means editing a dispatch table here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import reader.commands
from reader.log import configure_logging


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser from every module in `reader.commands`."""
    parser = argparse.ArgumentParser(prog="sscard", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default="warning", help="debug, info, warning or error (logs go to stderr)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(reader.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"reader.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
