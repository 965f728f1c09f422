"""`sscard run --config FILE`: the terminal daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reader.config import EX_CONFIG, ConfigError, check_environment, load_config
from reader.daemon.app import Daemon
from reader.uplink.errors import UplinkConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the terminal daemon")
    parser.add_argument("--config", type=Path, required=True, help="the terminal's TOML configuration")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 78 for anything the configuration got wrong, before a reader or the queue is opened.

    The checks are those of `sscard check-config --secrets`, with the same lines.

    Signals are taken over before the start: a SIGTERM that arrives while the readers are
    being opened then stops the daemon in order instead of killing it in the middle.
    """
    try:
        config = load_config(args.config)
        check_environment(config, str(args.config), secrets=True, at_start=True)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EX_CONFIG
    daemon = Daemon(config, config_path=args.config)
    with daemon.signals():
        try:
            daemon.start()
        except (ConfigError, UplinkConfigError) as error:
            daemon.stop()
            print(f"{args.config}: {error}", file=sys.stderr)
            return EX_CONFIG
        except BaseException:
            # A reader loop may already be in a tap: let it finish before the error ends the process.
            daemon.stop()
            raise
        daemon.run_until_stopped()
    return 0
