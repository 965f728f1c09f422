"""`sscard example-config KIND`: print the example configuration of one terminal kind.

An installed terminal has no checkout: the examples ship inside the package, and this is
how an operator gets one to start from, e.g.

    sscard example-config bus > /etc/sscard/config.toml
    sscard example-config bus | sscard check-config -
"""

from __future__ import annotations

import argparse
import sys

from reader.resources import EXAMPLE_KINDS, ResourceMissing, example_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "example-config",
        help="print an example configuration (bus, library, pharmacy, demo)",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("kind", metavar="KIND", choices=EXAMPLE_KINDS, help=f"one of {', '.join(EXAMPLE_KINDS)}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        text = example_config(args.kind)
    except ResourceMissing as error:
        print(f"sscard example-config: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
