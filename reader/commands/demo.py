"""`sscard demo`: a bus validator on its embedded default, with no hardware.

It starts the virtual reader bench (a real pcscd with the vpcd readers), puts the virtual
PSAM in the SAM slot, runs the real daemon (the real pipeline, journal and durable queue)
with config/demo.toml, and presents a scripted sequence of virtual cards: a Sichuan and a
Chongqing card, an expired card, a card with a locked transport application, a card
without one, a low balance, an elderly holder, a cloned card, the same card twice (passback)
and a card pulled away in the middle of the debit that comes back. Each decision is shown
as it happens, with the tap record the terminal would forward.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reader.backends.pcsc import wait_for_presence
from reader.config import Config, parse_config
from reader.daemon.app import Daemon
from reader.daemon.events import Subscription
from reader.daemon.feedback import Signal
from reader.sim.card import VirtualCard
from reader.sim.card_side import CardSide
from reader.sim.pcscd import VPCD_PORTS, VPCD_READERS, PcscdBench
from reader.sim.psam import VirtualPsam
from reader.sim.tearing import TearingCard
from reader.sim.vpcd import VpcdLink

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.toml"
INS_DEBIT = 0x54
CARD_SLOT, SAM_SLOT = VPCD_READERS


@dataclass
class Step:
    title: str
    card: Callable[[], CardSide]
    signals: int = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run a bus validator on virtual readers and cards (no hardware)")
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="bus configuration to run")
    parser.set_defaults(func=run)


def demo_config(path: Path, workdir: Path) -> Config:
    """The demo configuration with its state and a fresh token key in `workdir`."""
    raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    key = workdir / "token.key"
    key.write_text(secrets.token_hex(32))
    raw["terminal"]["state_dir"] = str(workdir)
    raw["terminal"]["token_key"] = f"file:{key}"
    return parse_config(raw, str(path))


class Watcher:
    """Counts the feedback signals and prints each record and decision as it happens.

    Records are published before the feedback is given, so the records waiting when a
    signal arrives belong to that tap.
    """

    def __init__(self) -> None:
        self.signals = 0
        self.cond = threading.Condition()
        self.subscription: Subscription | None = None

    def on_signal(self, signal: Signal) -> None:
        while self.subscription is not None and (record := self.subscription.get(timeout=0)) is not None:
            shown = {key: value for key, value in record.items() if value is not None}
            print(f"   record:  {json.dumps(shown, ensure_ascii=False)}")
        print(f"   display: {' | '.join(line for line in signal.lines if line)}   (beep: {signal.beep})", flush=True)
        with self.cond:
            self.signals += 1
            self.cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.signals >= count, timeout)


@contextmanager
def in_slot(card: CardSide, reader: str) -> Iterator[VpcdLink]:
    link = VpcdLink(card, port=VPCD_PORTS[reader])
    link.insert()
    try:
        yield link
    finally:
        link.remove()
        wait_for_presence(reader, present=False)


def script(workdir: Path) -> list[Step]:
    def card(name: str) -> Callable[[], CardSide]:
        return lambda: VirtualCard.from_profile(name, state_path=workdir / f"{name}.json")

    def torn() -> CardSide:
        tearing = TearingCard(VirtualCard.from_profile("chongqing", state_path=workdir / "chongqing.json"))
        tearing.plan(ins=INS_DEBIT, when="after")
        return tearing

    return [
        Step("Sichuan card", card("sichuan")),
        Step("the same card again at once (passback)", card("sichuan")),
        Step("Chongqing card pulled away during the debit, then back", torn, signals=2),
        Step("expired card", card("expired")),
        Step("transport application locked", card("locked-transport")),
        Step("no transport application", card("no-transport")),
        Step("low balance", card("low-balance")),
        Step("holder over 70", card("elderly")),
        Step("second-generation card", card("second-generation")),
        Step("cloned card (wrong keys)", card("cloned")),
    ]


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="sscard-demo-") as tmp, PcscdBench() as bench:
        workdir = Path(tmp)
        config = demo_config(args.config, workdir)
        print(f"pcscd {'started' if bench.owned else 'already running: reused'}; state in {workdir}")
        watcher = Watcher()
        with in_slot(VirtualPsam.from_profile("demo-psam", workdir / "psam.json"), SAM_SLOT):
            daemon = Daemon(config, echo=watcher.on_signal)
            daemon.start()
            assert daemon.services is not None
            watcher.subscription = daemon.services.events.subscribe()
            try:
                seen = 0
                for number, step in enumerate(script(workdir), 1):
                    print(f"\n{number:2}. {step.title}")
                    with in_slot(step.card(), CARD_SLOT):
                        seen += step.signals
                        if not watcher.wait(seen):
                            print("   (no decision within 10 s)")
                            return 1
                        threading.Event().wait(0.3)
                status = daemon.status()
            finally:
                daemon.stop()
        print(f"\nqueue: {status['queue']['depth']} tap records waiting for the uplink")
    return 0
