"""`sscard readers`: the readers this terminal can see, and whether a card is in each."""

from __future__ import annotations

import argparse
import json
from typing import Any

from reader.backends.base import ReaderError
from reader.backends.pcsc import reader_states


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("readers", help="list readers and their card state")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        rows: list[dict[str, Any]] = [
            {
                "backend": "pcsc",
                "name": state.name,
                "state": "unavailable" if state.unavailable else ("present" if state.present else "empty"),
                "atr": state.atr.hex().upper() if state.present else None,
            }
            for state in reader_states()
        ]
    except ReaderError as error:
        print(f"sscard readers: {error}")
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no readers")
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        print(f"{row['backend']:<6} {row['name']:<{width}}  {row['state']:<11} {row['atr'] or '-'}")
    return 0
