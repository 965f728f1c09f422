"""`sscard sim`: a virtual card or PSAM where a real one would sit, for integrators and the demo.

    sscard sim card --profile sichuan                      card in vpcd slot 0 until stopped
    sscard sim card --profile cloned --tap-seconds 2 --repeat
    sscard sim card --profile ./my-card.toml --nfc-udp 50001 --state /tmp/card.json
    sscard sim psam                                        demo PSAM in vpcd slot 1
    sscard sim profiles                                    the bundled profiles

A card tapped with `--tap-seconds N` is inserted for N seconds and then removed (power lost,
as a card leaving the field); `--repeat` taps again after `--gap-seconds`. With `--state`,
balance, counters and logs survive between taps and runs. SIGINT or SIGTERM removes the card
and ends the command.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

from reader.backends.base import CardSide
from reader.log import get_logger
from sscard_sim.card import VirtualCard
from sscard_sim.keys import KeyFileError
from sscard_sim.nfc_udp import NfcUdpCard
from sscard_sim.pcscd import VPCD_PORTS, VPCD_READERS
from sscard_sim.profile import ProfileError, bundled_profiles, load_card_profile
from sscard_sim.psam import VirtualPsam
from sscard_sim.state import StateFileError
from sscard_sim.vpcd import VpcdLink

_log = get_logger(component="sim-command")

CARD_VPCD = f"127.0.0.1:{VPCD_PORTS[VPCD_READERS[0]]}"
PSAM_VPCD = f"127.0.0.1:{VPCD_PORTS[VPCD_READERS[1]]}"


class _Slot(Protocol):
    def insert(self) -> None: ...

    def remove(self) -> None: ...


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port of 1 to 65535")
    return host, int(port)


def _udp_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UDP port (1 to 65535)")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds between 0 and one day")
    return value


def _error(command: str, message: object) -> None:
    """Errors go to stderr; stdout keeps only what the device does (inserted, removed)."""
    print(f"sscard sim {command}: {message}", file=sys.stderr)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sim", help="run a virtual card or PSAM on the virtual readers (no hardware)")
    actions = parser.add_subparsers(dest="sim_command", required=True, metavar="DEVICE")

    card = actions.add_parser("card", help="a virtual third-generation card from a profile")
    card.add_argument("--profile", required=True, help="bundled profile name or a profile TOML file")
    where = card.add_mutually_exclusive_group()
    where.add_argument("--vpcd", type=_host_port, metavar="HOST:PORT", help=f"vpcd slot (default {CARD_VPCD})")
    where.add_argument("--nfc-udp", type=_udp_port, metavar="PORT", help="answer nfcpy's udp driver on this UDP port")
    card.add_argument("--tap-seconds", type=_positive, metavar="N", help="insert for N seconds, then remove")
    card.add_argument("--repeat", action="store_true", help="tap again and again (needs --tap-seconds)")
    card.add_argument("--gap-seconds", type=_positive, default=1.0, metavar="N", help="pause between taps")
    card.add_argument("--state", type=Path, metavar="FILE", help="keep balance, counters and logs in FILE")
    card.set_defaults(func=run_card)

    psam = actions.add_parser("psam", help="the virtual PSAM (terminal secure module)")
    psam.add_argument("--profile", default="demo-psam", help="bundled PSAM profile name or a file")
    psam.add_argument("--vpcd", type=_host_port, metavar="HOST:PORT", help=f"vpcd slot (default {PSAM_VPCD})")
    psam.add_argument("--state", type=Path, metavar="FILE", help="keep the terminal sequence in FILE")
    psam.set_defaults(func=run_psam)

    profiles = actions.add_parser("profiles", help="list the bundled profiles")
    profiles.set_defaults(func=run_profiles)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _vpcd_slot(device: CardSide, address: tuple[str, int], label: str) -> tuple[_Slot, Callable[[], None]]:
    link = VpcdLink(device, host=address[0], port=address[1])

    def close() -> None:
        link.remove()

    print(f"{label} on vpcd {address[0]}:{address[1]}", flush=True)
    return link, close


def _nfc_slot(card: VirtualCard, port: int, label: str) -> tuple[_Slot, Callable[[], None]]:
    bridge = NfcUdpCard(card, port=port, uid=card.profile.uid, present=False).start()
    print(f"{label} on nfcpy path {bridge.path}", flush=True)
    return bridge, bridge.stop


def _tap_loop(slot: _Slot, stop: threading.Event, tap: float | None, repeat: bool, gap: float) -> None:
    while not stop.is_set():
        slot.insert()
        print("inserted", flush=True)
        if isinstance(slot, VpcdLink) and not slot.wait_connected(2.0):
            print(f"waiting for vpcd on port {slot.port} (is pcscd running?)", file=sys.stderr, flush=True)
        if tap is None:
            stop.wait()
        else:
            stop.wait(tap)
        slot.remove()
        print("removed", flush=True)
        if not repeat or stop.wait(gap):
            return


def run_card(args: argparse.Namespace) -> int:
    if args.repeat and args.tap_seconds is None:
        _error("card", "--repeat needs --tap-seconds")
        return 2
    try:
        card = VirtualCard.from_profile(args.profile, state_path=args.state)
    except (ProfileError, KeyFileError, StateFileError) as error:
        _error("card", error)
        return 1
    label = f"card {card.profile.name} ({card.profile.description})"
    stop = _stop_on_signals()
    if args.nfc_udp is not None:
        slot, close = _nfc_slot(card, args.nfc_udp, label)
    else:
        slot, close = _vpcd_slot(card, args.vpcd or _host_port(CARD_VPCD), label)
    _log.info("sim_card_started", profile=card.profile.name)
    try:
        _tap_loop(slot, stop, args.tap_seconds, args.repeat, args.gap_seconds)
    finally:
        close()
    return 0


def run_psam(args: argparse.Namespace) -> int:
    try:
        psam = VirtualPsam.from_profile(args.profile, state_path=args.state)
    except (ProfileError, KeyFileError, StateFileError) as error:
        _error("psam", error)
        return 1
    stop = _stop_on_signals()
    slot, close = _vpcd_slot(psam, args.vpcd or _host_port(PSAM_VPCD), f"PSAM {psam.profile.name}")
    try:
        _tap_loop(slot, stop, None, False, 0.0)
    finally:
        close()
    return 0


def run_profiles(args: argparse.Namespace) -> int:
    for name in bundled_profiles():
        try:
            description = load_card_profile(name).description
        except ProfileError:
            description = "PSAM profile"
        print(f"{name:<20} {description}")
    return 0
