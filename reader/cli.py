"""`sscard`: the one command of sscard-terminal.

Each subcommand lives in its own module under `reader.commands` and registers itself, so
that adding a command never means editing a dispatch table here. Commands of other packages
of the distribution (the simulator's `demo` and `sim`) arrive through the `sscard.commands`
entry points: the product never imports the simulator, and a terminal image built without
it simply has no such commands.

The conventions are those of the smart-card tools operators already know (pcsc_scan,
opensc-tool, nfcpy's examples): data on stdout, errors and waiting prompts on stderr, one
line per error and never a traceback for bad input, global options anywhere on the line,
and documented exit statuses.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import pkgutil
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

import reader.commands
from reader.log import configure_logging

DISTRIBUTION = "sscard-terminal"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "warning"
EX_FAILURE = 1
EX_USAGE = 2
EX_INTERRUPTED = 130

EXIT_STATUSES = """\
exit status:
  0    done (check-config: the configuration is valid; readers: everything configured is there)
  1    the command failed (a card could not be read, a reader or peripheral is missing, a file
       could not be written)
  2    bad usage or bad input (unknown option, bad choice, bad hex, a file of the wrong kind)
  3    read: no card within --timeout
  78   the configuration is wrong (EX_CONFIG; the systemd unit does not restart on it)
  130  interrupted (Ctrl-C)

Data goes to stdout, errors and prompts to stderr; logs are JSON lines on stderr."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, as `sscard` promises.

    argparse prints the whole usage before the error; with a dozen subcommands that buries
    the one line that matters. The usage stays one `--help` away, and the line says so.
    Subparsers inherit the class, so every subcommand behaves the same.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed version, from the package metadata (the single source is pyproject.toml)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run `pip install .`)"


COMMAND_ENTRY_POINTS = "sscard.commands"


def command_modules() -> dict[str, str]:
    """Command name (as typed) to module: `check-config` lives in `reader.commands.check_config`."""
    modules = {
        info.name.replace("_", "-"): f"reader.commands.{info.name}"
        for info in pkgutil.iter_modules(reader.commands.__path__)
    }
    for entry in importlib.metadata.entry_points(group=COMMAND_ENTRY_POINTS):
        modules.setdefault(entry.name, entry.value)
    return dict(sorted(modules.items()))


def _log_level(text: str) -> str:
    """A log level, in any case; anything else is refused (a typo must not silence the logs)."""
    level = text.lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(LOG_LEVELS)})")
    return level


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """`--log-level` on the top parser (with the default) and on every subcommand (without one).

    A subcommand's parser only sets the value when the option is given there, so the value
    given before the subcommand survives unless it is given again after.
    """
    parser.add_argument(
        "--log-level",
        type=_log_level,
        metavar="LEVEL",
        default=DEFAULT_LOG_LEVEL if top else argparse.SUPPRESS,
        help=f"{', '.join(LOG_LEVELS)} (default {DEFAULT_LOG_LEVEL}; logs go to stderr)",
    )


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below `parser` (subcommands, and their actions such as `queue status`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, of the one module `only` (start-up stays fast), or none ("")."""
    parser = Parser(
        prog="sscard",
        description=(__doc__ or "").splitlines()[0],
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sscard {version()}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = command_modules()
    names = [] if only == "" else [modules[only]] if only in modules else modules.values()
    for name in names:
        importlib.import_module(name).register(sub)
    for child in _subparsers(parser):
        child.epilog = f"{child.epilog}\n\n{EXIT_STATUSES}" if child.epilog else EXIT_STATUSES
        child.formatter_class = argparse.RawDescriptionHelpFormatter
        _add_global_options(child, top=False)
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
    word = _command_word(argv)
    # `sscard --version` needs no command module (and works even if one cannot be imported).
    parser = build_parser(only="" if word is None and "--version" in argv else word)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print(f"sscard {args.command}: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except OSError as error:
        # A file or device the command was pointed at cannot be used: say which, in one line.
        # With --log-level debug the traceback is wanted, to find where it came from.
        if args.log_level == "debug":
            raise
        print(f"sscard {args.command}: {_os_error(error)}", file=sys.stderr)
        return EX_FAILURE
    return status


def _os_error(error: OSError) -> str:
    """`[Errno 2] No such file or directory: 'x'` as `x: No such file or directory`."""
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
