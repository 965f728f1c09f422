"""`sscard run --config FILE`: the terminal daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reader.config import EX_CONFIG, ConfigError, load_config
from reader.daemon.app import Daemon


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the terminal daemon")
    parser.add_argument("--config", type=Path, required=True, help="the terminal's TOML configuration")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        daemon = Daemon(config, config_path=args.config)
        daemon.start()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EX_CONFIG
    daemon.run_until_stopped()
    return 0
