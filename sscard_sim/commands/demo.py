"""`sscard demo`: a bus validator on its embedded default, with no hardware.

It starts the virtual reader bench (a real pcscd with the vpcd readers), puts the virtual
PSAM in the SAM slot, starts a back office on loopback, runs the real daemon (the real
pipeline, journal, durable queue and HTTP uplink) with config/demo.toml, and presents a
scripted sequence of virtual cards: a Sichuan and a Chongqing card, an expired card, a card
with a locked transport application, a card without one, a low balance, an elderly holder,
a cloned card, the same card twice (passback) and a card pulled away in the middle of the
debit that comes back.

Each tap is one line of a table (card, decision, reason, fare and balance in yuan, the beep
and the display text); the daemon's logs go to a file in the demo's state folder (to stderr
with --verbose), so they never break the table. At the end the demo waits, for a bounded
time, until the uplink has delivered every tap record, then prints a summary: taps by result
and reason, revenue, delivered and still queued. `--json` prints the raw tap records, one
JSON object a line, instead of the table (the rest then goes to stderr).

`--kind` runs another terminal kind on the same bench instead, from its shipped example
configuration (config/<kind>.toml) moved onto the virtual readers, with the cards that
exercise its rules: `library` and `pharmacy` (who is served), `canteen` (the meal priced by
the holder's age band, a double tap, the discount of the meal period used up, a low balance)
and `venue` (entry priced by band, once a day). The canteen and the venue run on a pinned
clock (today at lunch time, and at opening time), so their meal periods and daily counts are
shown whatever the hour of the run. `--kind bus` is the default demo.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import secrets
import sys
import tempfile
import threading
import time
import tomllib
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from reader.backends.base import CardSide
from reader.config import Config, parse_config
from reader.daemon.app import Daemon
from reader.daemon.events import Subscription
from reader.daemon.feedback import Signal, yuan
from reader.log import configure_logging
from reader.resources import example_config_path
from sscard_sim.backoffice import BackOffice
from sscard_sim.card import VirtualCard
from sscard_sim.pcscd import VPCD_PORTS, VPCD_READERS, PcscdBench, wait_for_presence
from sscard_sim.psam import VirtualPsam
from sscard_sim.tearing import TearingCard
from sscard_sim.vpcd import VpcdLink

INS_DEBIT = 0x54
CARD_SLOT, SAM_SLOT = VPCD_READERS
DECISION_TIMEOUT = 10.0
"""How long one card may wait for its decision before the demo gives up (a hang, not a speed check)."""
DRAIN_TIMEOUT = 10.0
"""How long the demo waits at the end for the uplink to deliver every tap record."""
SETTLE_SECONDS = 0.3
"""How long a card stays on the reader after its decision, as a rider's would."""
KINDS = ("bus", "library", "pharmacy", "canteen", "venue")
PINNED_HOUR = {"canteen": (11, 30), "venue": (10, 0)}
"""The local time of day the canteen and venue demos run at (lunch, opening time)."""

Record = Mapping[str, Any]


def bundled_config() -> Path:
    """Where the demo configuration shipped with sscard is; the one place that locates a file."""
    return example_config_path("demo")


@dataclass
class Step:
    """One card presented to the reader, and how many signals it takes (a torn debit gives two)."""

    title: str
    card: Callable[[], CardSide]
    signals: int = 1
    later: float = 0.0
    """Seconds the demo's pinned clock moves on before this card (canteen, venue)."""


@dataclass
class Tap:
    """What one step came to: the records it left and the signals given while it was on the reader."""

    step: Step
    records: list[Record] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    decided: bool = True


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo`; the configuration is located at run time (bundled_config), not at import."""
    parser = sub.add_parser("demo", help="run a bus validator on virtual readers and cards (no hardware)")
    parser.add_argument(
        "--kind", choices=KINDS, default=None, help="the terminal kind to run (default: bus, the bundled demo)"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="configuration (default: the bundled demo, or the kind's example)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw tap records (JSON lines), not the table")
    parser.add_argument("--verbose", action="store_true", help="send the daemon's logs to stderr, not to the log file")
    parser.add_argument("--keep", action="store_true", help="keep the state folder (queue, journal, logs) afterwards")
    parser.set_defaults(func=run)


def demo_config(path: Path, workdir: Path, uplink_url: str, uplink_key: Path) -> Config:
    """The demo configuration with its state, a fresh token key and the embedded back office.

    The HTTP uplink keeps the settings of the file (batch size, timeouts) but is pointed at
    the back office on loopback and signs with a key made for this run; MQTT is left out,
    since one queue feeds one uplink.
    """
    raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    return _with_state(raw, path, workdir, uplink_url, uplink_key)


def _with_state(raw: dict[str, Any], path: Path, workdir: Path, uplink_url: str, uplink_key: Path) -> Config:
    """`raw` with the demo's state folder, a fresh token key and the embedded back office."""
    key = workdir / "token.key"
    key.write_text(secrets.token_hex(32))
    raw["terminal"]["state_dir"] = str(workdir)
    raw["terminal"]["token_key"] = f"file:{key}"
    http = dict(raw.get("uplink", {}).get("http", {}))
    http.update(enabled=True, url=uplink_url, hmac_key_file=str(uplink_key))
    raw["uplink"] = {"http": http}
    return parse_config(raw, str(path))


def kind_demo_config(path: Path, workdir: Path, uplink_url: str, uplink_key: Path) -> Config:
    """A kind's example configuration on the virtual bench: the vpcd readers, no devices.

    The example's own readers, serial devices, local API, hotlist source and reservation
    list are for a real installation; the demo uses the vpcd slots and the embedded back
    office, and leaves the rest out.
    """
    raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    raw["readers"] = {"pcsc": {"contactless": CARD_SLOT, "sam": SAM_SLOT}}
    for section in ("api", "hotlist"):
        raw.pop(section, None)
    if isinstance(raw.get("venue"), dict):
        raw["venue"].pop("reservations", None)
    return _with_state(raw, path, workdir, uplink_url, uplink_key)


class PinnedClock:
    """The demo terminal's clock: today at a fixed local time, moved on only by the script."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)


class Watcher:
    """Collects the feedback signals, and the records published before each of them.

    The pipeline publishes a tap's record before it gives the feedback, so the records
    waiting when a signal arrives belong to the taps decided so far.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.signals: list[Signal] = []
        self.subscription: Subscription | None = None

    def on_signal(self, signal: Signal) -> None:
        """Called from the feedback thread for every signal, in the order given."""
        with self.cond:
            self.signals.append(signal)
            self.cond.notify_all()

    def wait(self, count: int, timeout: float = DECISION_TIMEOUT) -> bool:
        """Block until `count` signals have been given in all; False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: len(self.signals) >= count, timeout)

    def records(self) -> list[Record]:
        """The records published since the last call."""
        taken: list[Record] = []
        while self.subscription is not None and (record := self.subscription.get(timeout=0)) is not None:
            taken.append(record)
        return taken


@contextlib.contextmanager
def in_slot(card: CardSide, reader: str) -> Iterator[VpcdLink]:
    """The card on the reader for the duration of the block; gone (as pcscd sees it) after."""
    link = VpcdLink(card, port=VPCD_PORTS[reader])
    link.insert()
    try:
        yield link
    finally:
        link.remove()
        wait_for_presence(reader, present=False)


def script(workdir: Path) -> list[Step]:
    """The cards of the demo, in order; their state (balance, logs) lives in `workdir`."""

    def card(name: str) -> Callable[[], CardSide]:
        return lambda: VirtualCard.from_profile(name, state_path=workdir / f"{name}.json")

    def torn() -> CardSide:
        tearing = TearingCard(VirtualCard.from_profile("chongqing", state_path=workdir / "chongqing.json"))
        tearing.plan(ins=INS_DEBIT, when="after")
        return tearing

    return [
        Step("Sichuan card", card("sichuan")),
        Step("same card again (passback)", card("sichuan")),
        Step("Chongqing card, torn, back", torn, signals=2),
        Step("expired card", card("expired")),
        Step("transport app locked", card("locked-transport")),
        Step("no transport app", card("no-transport")),
        Step("low balance", card("low-balance")),
        Step("holder over 70", card("elderly")),
        Step("second-generation card", card("second-generation")),
        Step("cloned card (wrong keys)", card("cloned")),
    ]


def kind_script(kind: str, workdir: Path) -> list[Step]:
    """The cards that exercise the rules of `kind`; the bus's are `script`'s."""
    if kind == "bus":
        return script(workdir)

    def card(name: str, balance: int | None = None) -> Callable[[], CardSide]:
        def make() -> CardSide:
            state = workdir / f"{name}.json"
            fresh = not state.exists()
            virtual = VirtualCard.from_profile(name, state_path=state)
            if fresh and balance is not None:  # topped up at a service point before the demo
                virtual.store.commit(virtual.memory.with_changes(balance=balance))
            return virtual

        return make

    if kind == "canteen":
        return [
            Step("Sichuan card (no band)", card("sichuan")),
            Step("holder over 60 (senior)", card("elderly", 5000)),
            Step("same card at once (double)", card("elderly", 5000)),
            Step("same card, second meal", card("elderly", 5000), later=120),
            Step("low balance", card("low-balance")),
            Step("expired card", card("expired")),
            Step("cloned card (wrong keys)", card("cloned")),
        ]
    if kind == "venue":
        return [
            Step("Sichuan card (full price)", card("sichuan")),
            Step("holder over 65 (free)", card("elderly")),
            Step("Sichuan card again today", card("sichuan")),
            Step("expired card", card("expired")),
            Step("Wenzhou card (region)", card("no-transport")),
            Step("cloned card (wrong keys)", card("cloned")),
        ]
    return [
        Step("Sichuan card", card("sichuan")),
        Step("Chongqing card", card("chongqing")),
        Step("expired card", card("expired")),
        Step("Wenzhou card (region)", card("no-transport")),
        Step("holder over 70", card("elderly")),
        Step("second-generation card", card("second-generation")),
        Step("cloned card (wrong keys)", card("cloned")),
    ]


# ---------------------------------------------------------------------- the table

COLUMNS: tuple[tuple[str, int, str], ...] = (
    ("#", 3, ">"),
    ("card", 28, "<"),
    ("decision", 9, "<"),
    ("reason", 21, "<"),
    ("fare", 6, ">"),
    ("balance", 8, ">"),
    ("beep", 8, "<"),
    ("display", 0, "<"),
)
"""Name, width and alignment; the display text comes last, as its Chinese characters are
twice as wide on a terminal as their count and would shift every column after them."""


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COLUMNS, strict=True)).rstrip()


def table_header() -> list[str]:
    """The header line of the table and its rule."""
    header = _row([name for name, _, _ in COLUMNS])
    return [header, "-" * len(header)]


def _shown(signal: Signal) -> str:
    return " | ".join(line for line in signal.lines if line)


def _money(fen: object) -> str:
    return yuan(fen) if isinstance(fen, int) else "-"


def balance_after(record: Record) -> object:
    """The purse after the tap: what the debit left, or the balance read when nothing was debited."""
    after = record.get("balance_after")
    return after if after is not None else record.get("balance_before")


def tap_rows(number: int, tap: Tap) -> list[str]:
    """The table lines of one step: one per tap record, the signals beside the last one.

    A card pulled away mid-debit gives a "tap again" signal and, once it is back, the record
    and its own signal: the row shows the final signal, with the earlier ones after it.
    """
    final = tap.signals[-1] if tap.signals else None
    beep = final.beep if final else "-"
    display = _shown(final) if final else ("(no decision)" if not tap.decided else "-")
    earlier = "; ".join(f"{_shown(signal)} ({signal.beep})" for signal in tap.signals[:-1])
    if earlier:
        display += f"   [before: {earlier}]"
    if not tap.records:
        return [_row([str(number), tap.step.title, "-", "no record", "-", "-", beep, display])]
    rows = []
    for index, record in enumerate(tap.records, 1):
        last = index == len(tap.records)
        rows.append(
            _row(
                [
                    str(number),
                    tap.step.title,
                    str(record.get("result")),
                    str(record.get("reason")),
                    _money(record.get("fare")) if record.get("result") == "accepted" else "-",
                    _money(balance_after(record)),
                    beep if last else "",
                    display if last else "",
                ]
            )
        )
    return rows


# ---------------------------------------------------------------------- the summary


@dataclass(frozen=True)
class Delivery:
    """Where the records stand at the end: held by the back office, still queued, set aside."""

    delivered: int
    queued: int
    poison: int
    drained: bool


def summary_lines(records: Sequence[Record], delivery: Delivery, kind: str = "bus") -> list[str]:
    """Taps by result and by reason, revenue in yuan, and what the uplink delivered.

    At a venue gate the fare of a record is the entry price of the band, recorded and not
    charged: it is summed as the entries' value, not as revenue.
    """
    results = Counter(str(record.get("result")) for record in records)
    lines = [f"Summary: {len(records)} taps"]
    for result, count in sorted(results.items()):
        reasons = Counter(str(record.get("reason")) for record in records if record.get("result") == result)
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        lines.append(f"  {result:<12}{count:<4}({by_reason})")
    fares = [record.get("fare") for record in records if record.get("result") == "accepted"]
    paid = [fare for fare in fares if isinstance(fare, int) and fare > 0]
    free = sum(fare == 0 for fare in fares)
    if kind == "venue":
        lines.append(f"  {'entries':<12}{len(fares)} ({free} free), value {yuan(sum(paid))} yuan, not charged")
    elif kind == "bus":
        lines.append(f"  {'revenue':<12}{yuan(sum(paid))} yuan ({len(paid)} paid rides, {free} free)")
    elif any(isinstance(fare, int) for fare in fares):
        lines.append(f"  {'revenue':<12}{yuan(sum(paid))} yuan ({len(paid)} paid, {free} free)")
    uplink = f"  {'uplink':<12}{delivery.delivered} delivered to the back office, {delivery.queued} queued"
    if delivery.poison:
        uplink += f", {delivery.poison} set aside as poison"
    if not delivery.drained:
        uplink += f" (not drained within {DRAIN_TIMEOUT:g} s)"
    lines.append(uplink)
    return lines


def wait_for_delivery(daemon: Daemon, office: BackOffice, records: Sequence[Record], timeout: float) -> Delivery:
    """Wait, at most `timeout` seconds, until the back office holds every record and the queue is empty."""
    services = daemon.services
    assert services is not None
    ids = [(str(record["terminal_id"]), str(record["tap_id"])) for record in records]
    deadline = time.monotonic() + timeout
    while True:
        delivered = sum(office.holds(terminal, tap_id) for terminal, tap_id in ids)
        status = services.queue.status()
        drained = delivered == len(ids) and status.depth == 0
        if drained or time.monotonic() >= deadline:
            return Delivery(delivered, status.depth, status.poison, drained)
        time.sleep(0.05)


# ---------------------------------------------------------------------- running


@contextlib.contextmanager
def state_folder(keep: bool) -> Iterator[Path]:
    """A fresh folder for the demo's keys, queue, journal, card states and logs."""
    if keep:
        yield Path(tempfile.mkdtemp(prefix="sscard-demo-"))
        return
    with tempfile.TemporaryDirectory(prefix="sscard-demo-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def logs_to(path: Path, verbose: bool, level: str) -> Iterator[None]:
    """The daemon's logs in `path` (or on stderr when verbose) for the run; stderr again after."""
    shown = "debug" if level.lower() == "debug" else "info"
    if verbose:
        configure_logging(shown)
        try:
            yield
        finally:
            configure_logging(level)
        return
    with path.open("a", encoding="utf-8") as stream:
        configure_logging(shown, stream)
        try:
            yield
        finally:
            configure_logging(level)


def run(args: argparse.Namespace) -> int:
    """Run the scripted demo; 0 when every card was decided and every record delivered."""
    kind: str = args.kind or "bus"
    if args.config is not None:
        path: Path = args.config
    else:
        path = bundled_config() if kind == "bus" else example_config_path(kind)
    notes: TextIO = sys.stderr if args.json else sys.stdout
    with state_folder(args.keep) as workdir:
        log_file = workdir / "demo.log"
        with logs_to(log_file, args.verbose, args.log_level):
            status = _run(path, workdir, args.json, notes, kind)
        if not args.verbose:
            print(
                f"Logs: {log_file}" + ("" if args.keep else " (removed with the state folder; --keep keeps it)"),
                file=notes,
            )
    return status


def _run(path: Path, workdir: Path, as_json: bool, notes: TextIO, kind: str = "bus") -> int:
    uplink_key = workdir / "uplink.key"
    uplink_key.write_text(secrets.token_hex(32))
    with PcscdBench(log_file=workdir / "pcscd.log") as bench, BackOffice(hmac_key=uplink_key.read_bytes()) as office:
        if kind == "bus":
            config = demo_config(path, workdir, office.url, uplink_key)
            bus = config.bus
            assert bus is not None, "the demo runs a bus validator"
            print(f"Bus validator {config.terminal.id}, line {bus.line}, fare {yuan(bus.fare)} yuan", file=notes)
        else:
            config = kind_demo_config(path, workdir, office.url, uplink_key)
            if config.terminal.profile != kind:
                print(f"{path}: terminal.profile is {config.terminal.profile!r}, not {kind!r}", file=notes)
                return 2
            print(f"{kind.capitalize()} terminal {config.terminal.id} ({path.name})", file=notes)
        print(f"pcscd {'started' if bench.owned else 'already running: reused'}; state in {workdir}", file=notes)
        print(f"Back office on loopback: {office.url}", file=notes)
        watcher = Watcher()
        taps: list[Tap] = []
        with in_slot(VirtualPsam.from_profile("demo-psam", workdir / "psam.json"), SAM_SLOT):
            daemon = Daemon(config, echo=watcher.on_signal)
            daemon.start()
            try:
                assert daemon.services is not None
                clock: PinnedClock | None = None
                if kind in PINNED_HOUR:
                    hour, minute = PINNED_HOUR[kind]
                    today = dt.datetime.now(zoneinfo.ZoneInfo(config.terminal.timezone))
                    clock = PinnedClock(today.replace(hour=hour, minute=minute, second=0, microsecond=0))
                    daemon.services.clock = clock
                    print(f"Terminal clock pinned at {clock().isoformat(timespec='minutes')}", file=notes)
                watcher.subscription = daemon.services.events.subscribe()
                if not as_json:
                    print("\n" + "\n".join(table_header()), flush=True)
                taps = _present(kind_script(kind, workdir), watcher, as_json, clock)
                records = [record for tap in taps for record in tap.records]
                delivery = wait_for_delivery(daemon, office, records, DRAIN_TIMEOUT)
            finally:
                daemon.stop()
        print(file=notes)
        undecided = [tap.step.title for tap in taps if not tap.decided]
        if undecided:
            print(f"Stopped: no decision for the {undecided[0]} within {DECISION_TIMEOUT:g} s", file=notes)
        print("\n".join(summary_lines(records, delivery, kind)), file=notes, flush=True)
    return 0 if not undecided and delivery.drained else 1


def _present(steps: Sequence[Step], watcher: Watcher, as_json: bool, clock: PinnedClock | None = None) -> list[Tap]:
    """Present each card in turn and print its line (or its records) once it is decided."""
    taps: list[Tap] = []
    seen = 0
    for number, step in enumerate(steps, 1):
        if clock is not None and step.later:
            clock.advance(step.later)
        tap = Tap(step)
        with in_slot(step.card(), CARD_SLOT):
            tap.decided = watcher.wait(seen + step.signals)
            if tap.decided:
                threading.Event().wait(SETTLE_SECONDS)
        with watcher.cond:
            tap.signals = watcher.signals[seen:]
            seen = len(watcher.signals)
        tap.records = watcher.records()
        taps.append(tap)
        if as_json:
            for record in tap.records:
                print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print("\n".join(tap_rows(number, tap)), flush=True)
        if not tap.decided:
            break
    return taps
