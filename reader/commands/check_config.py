"""`sscard check-config FILE`: validate a configuration without starting anything.

What `sscard run` would refuse, this refuses too, with the same lines: the file itself
(types, ranges, inf and nan, what the daemon's parts would refuse at start), and the files
and directories it names on this machine (state directory, queue and hotlist places, TLS
certificates and CA files). `--secrets` also reads every secret, which on a terminal only
the service can (systemd credentials). FILE may be `-` for standard input, so that
`sscard example-config bus | sscard check-config -` works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reader.config import EX_CONFIG, ConfigError, check_environment, load_config, load_config_bytes

STDIN_NAME = "<stdin>"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check-config",
        help="validate a configuration file (exit 78 when it is wrong)",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("file", metavar="FILE", help="the configuration (TOML), or - for standard input")
    parser.add_argument(
        "--secrets",
        action="store_true",
        help="also read every secret the configuration references (token key, API token, uplink key files)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = STDIN_NAME if args.file == "-" else args.file
    try:
        config = load_config_bytes(sys.stdin.buffer.read(), source) if args.file == "-" else load_config(Path(source))
        check_environment(config, source, secrets=args.secrets)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EX_CONFIG
    print(f"{source}: ok ({config.terminal.profile} terminal {config.terminal.id})")
    return 0
