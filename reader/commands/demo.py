"""`sscard demo`: the terminal on its embedded default, with no hardware.

It starts the virtual reader bench (a real pcscd with the vpcd readers), presents a
virtual card and runs the real commands against it.
"""

from __future__ import annotations

import argparse

from reader.backends.pcsc import wait_for_presence
from reader.commands import readers
from reader.sim.pcscd import VPCD_PORTS, PcscdBench
from reader.sim.vpcd import VpcdLink

BLANK_ATR = bytes.fromhex("3B8880010000000000718100F9")


class BlankCard:
    """A contactless card with no application: every command is answered 6D 00."""

    def power_on(self) -> bytes:
        return BLANK_ATR

    def power_off(self) -> None:
        return None

    def atr(self) -> bytes:
        return BLANK_ATR

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x6d\x00"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run the terminal on virtual readers and cards (no hardware)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with PcscdBench() as bench:
        print(f"pcscd {'started' if bench.owned else 'already running, reused'}; readers before the tap:")
        readers.run(argparse.Namespace(json=False))
        reader = "Virtual PCD 00 00"
        with VpcdLink(BlankCard(), port=VPCD_PORTS[reader]):
            if not wait_for_presence(reader, present=True):
                print(f"pcscd did not see the virtual card in {reader}")
                return 1
            print(f"a blank virtual card is on {reader}:")
            readers.run(argparse.Namespace(json=False))
    return 0
