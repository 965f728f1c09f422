"""`sscard decode KIND HEX`: decode one response from a log and print it as JSON.

Made for field engineers reading logs: personal fields stay masked unless `--reveal`, and
bad input answers with exit status 2 and one line naming the structure, the field and the
byte offset, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from protocols.decode import UnknownKind, decode, describe_kinds, parse_hex
from protocols.errors import ProtocolError

EXIT_BAD_INPUT = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kinds = describe_kinds()
    epilog = "kinds:\n" + "\n".join(f"  {name:<18} {text}" for name, text in kinds.items())
    parser = subparsers.add_parser(
        "decode",
        help="decode one card response (hex) and print JSON",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", metavar="KIND", help="what the bytes are (see the list below)")
    parser.add_argument("hex", metavar="HEX", nargs="+", help="the bytes in hex; spaces are allowed")
    parser.add_argument("--reveal", action="store_true", help="show personal fields instead of masking them")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    try:
        data = parse_hex(" ".join(args.hex))
        result = decode(args.kind, data, reveal=args.reveal)
    except ProtocolError as exc:
        print(f"sscard decode: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UnknownKind as exc:
        print(f"sscard decode: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0
