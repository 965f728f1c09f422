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


def command_modules() -> dict[str, str]:
    """Command name (as typed) to module name: `check-config` lives in `check_config`."""
    return {
        info.name.replace("_", "-"): info.name
        for info in sorted(pkgutil.iter_modules(reader.commands.__path__), key=lambda m: m.name)
    }


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the one module `only` (start-up stays fast)."""
    parser = argparse.ArgumentParser(prog="sscard", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default="warning", help="debug, info, warning or error (logs go to stderr)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = command_modules()
    for name in [modules[only]] if only in modules else modules.values():
        importlib.import_module(f"reader.commands.{name}").register(sub)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The first word that is not a global option or its value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status.

    Only the module of the command being run is imported: the daemon's modules load
    pyscard, nfcpy, pydantic and paho, which `sscard decode` has no use for.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_command_word(argv))
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
