"""`sscard check-config FILE`: validate a configuration without starting anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reader.config import EX_CONFIG, ConfigError, check_secrets, load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("check-config", help="validate a configuration file (exit 78 when it is wrong)")
    parser.add_argument("file", type=Path)
    parser.add_argument(
        "--secrets",
        action="store_true",
        help="also read every secret the configuration references (token key, API token, uplink key files)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        if args.secrets:
            check_secrets(config, str(args.file))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EX_CONFIG
    print(f"{args.file}: ok ({config.terminal.profile} terminal {config.terminal.id})")
    return 0
