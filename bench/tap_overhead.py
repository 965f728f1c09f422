"""Tap overhead: the daemon's bus tap against a bare replay of the same APDUs, through pcscd and vpcd.

Both paths run here, in one process, on the same virtual devices: the T-Union card in vpcd
slot 0 and the PSAM in slot 1, behind the real pcscd.

- Daemon: the real `Daemon` (ReaderLoop, TapPipeline, journal, durable queue) with
  config/demo.toml, passback off (every tap presents a fresh card in the same state, so
  each tap is the same full CAPP purchase: SELECT, SSSE read with PSAM authentication,
  balance, INITIALIZE, MAC1, UPDATE CAPP DATA CACHE, DEBIT, MAC2).
- Bare replay: the APDUs of one daemon tap, recorded at the devices, sent again with
  pyscard's SCardTransmit to a fresh card in the same state, each answer checked against
  the recorded one (the card's random source and the PSAM are renewed per tap, so every
  answer repeats byte for byte, MAC1 and TAC included).

Timing, one clock (CLOCK_MONOTONIC) for every stamp:
- start: the first message pcscd sends the card after it was put in the slot (the ATR
  probe of pcscd's presence poll). Everything before it is pcscd's 400 ms poll, which no
  client can shorten; it is reported on its own as "presence detection" and left out of
  both paths. From there on, pcscd powers the card and wakes its waiting clients: that
  part is the same for both paths and stays in.
- end, daemon: the tap record committed to the queue (a stamp taken as `TapQueue.enqueue`
  returns in the pipeline thread, before the feedback is given).
- end, replay: the last SCardTransmit returned.
- device time: what the card and PSAM took to answer (their activation and every APDU,
  stamped at the devices); host time = total - device time, which is where the two paths
  differ. The SQLite time of the tap (journal and queue calls) is stamped around those
  calls and shown on its own.

Then the same with the link model of sscard_sim/air.py: the card behind ISO/IEC 14443 at
106 kbit/s with assumed chip times, the PSAM behind T=0 at 38400 baud, to show the
daemon's share of a realistic tap.

Two figures say where the daemon's extra time goes: the same taps on in-process readers
(no pcscd, no vpcd: the pipeline, its SQLite calls and its thread hand-offs alone), and
the cost of the hand-off each APDU makes to its exchange worker thread (ExchangeWorker),
back to back and after 5 ms of idling, as between the APDUs of a real card.
The overhead's p99 is the difference of the two paths' p99s (the taps are not paired).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import secrets
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

from smartcard import scard

from bench.report import percentiles, write
from bench.trace import Apdu, Control, Swappable, TracedCard, TraceLog
from reader.backends.base import CardSide, ReaderKind
from reader.backends.loop import LoopState
from reader.backends.watchdog import ExchangeWorker
from reader.config import Config, parse_config
from reader.daemon.app import Daemon
from reader.service.notify import SystemdNotifier
from sscard_sim.air import AirInterface, AirTiming, CardProcessing, ContactInterface, ContactTiming
from sscard_sim.card import VirtualCard
from sscard_sim.inprocess import InProcessReader
from sscard_sim.pcscd import VPCD_PORTS, VPCD_READERS, PcscdBench, wait_for_presence
from sscard_sim.profile import load_card_profile, load_psam_profile
from sscard_sim.psam import VirtualPsam
from sscard_sim.vpcd import VpcdLink

TAPS = int(os.environ.get("BENCH_TAPS", "60"))
WARMUP = 3
IN_PROCESS_TAPS = 300
CARD_SLOT, SAM_SLOT = VPCD_READERS
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.toml"
TAP_TIMEOUT_S = 10.0
TARGET_OVERHEAD_MS = 2.0
TARGET_OVERHEAD_P99_MS = 5.0
TARGET_APDUS = {"first rider": 25, "repeat rider": 18}
TARGET_AIR_REPEAT_MS = 150.0
JOURNAL_CALLS = ("pending", "last", "begin_debit")


class BenchFailure(RuntimeError):
    """The bench could not run a tap as planned (no record committed, no card traced, a PC/SC error)."""


@dataclass
class Variant:
    """How the devices are presented: bare virtual devices, or behind the link model."""

    name: str
    card: Callable[[], CardSide]
    psam: Callable[[], CardSide]


def _variants() -> list[Variant]:
    """The same repeat rider's card each tap, on bare devices and behind the link model."""
    card_profile = load_card_profile("sichuan")

    def card() -> CardSide:
        return VirtualCard(card_profile, random=random.Random(1).randbytes)

    return [
        Variant("virtual devices", card, _psam),
        Variant("air model", lambda: AirInterface(card(), AirTiming(), CardProcessing()), _air_psam),
    ]


def _psam() -> CardSide:
    return VirtualPsam(load_psam_profile("demo-psam"), None, random.Random(2).randbytes)


def _air_psam() -> CardSide:
    return ContactInterface(_psam(), ContactTiming())


def _first_riders() -> Variant:
    """Behind the link model, a card never seen before at every tap (its own card number), so
    the holder's band is read and the SSSE authenticated each time."""
    profile = load_card_profile("sichuan")
    numbers = itertools.count(1)

    def card() -> CardSide:
        ssse = dataclasses.replace(profile.ssse, card_number=f"T{next(numbers):08d}")
        fresh = VirtualCard(dataclasses.replace(profile, ssse=ssse), random=random.Random(1).randbytes)
        return AirInterface(fresh, AirTiming(), CardProcessing())

    return Variant("air model, first rider", card, _air_psam)


@dataclass
class TapTiming:
    """One tap, in milliseconds from pcscd's first contact with the card."""

    presence: float
    total: float
    first_apdu: float
    device: float
    apdus: int
    card_apdus: int
    gap: float
    """Mean host time between an answer leaving a device and the next command reaching one."""
    tail: float
    sqlite: dict[str, float] = field(default_factory=dict)

    @property
    def host(self) -> float:
        return self.total - self.device


def _timing(
    t_insert: float, controls: list[Control], apdus: list[Apdu], end: float, sqlite: dict[str, float]
) -> TapTiming:
    card = [c for c in controls if c.slot == "card" and c.at >= t_insert]
    if not card or not apdus:
        raise BenchFailure("no card activity was traced for a tap")
    start = card[0].at
    powered = sum(c.at for c in card if c.kind == "powered") - sum(c.at for c in card if c.kind == "power_on")
    in_tap = sorted((a for a in apdus if start <= a.start <= end), key=lambda a: a.start)
    gaps = [later.start - earlier.end for earlier, later in itertools.pairwise(in_tap)]
    first = next(a.start for a in in_tap if a.slot == "card")
    return TapTiming(
        presence=(start - t_insert) * 1000,
        total=(end - start) * 1000,
        first_apdu=(first - start) * 1000,
        device=(sum(a.end - a.start for a in in_tap) + max(0.0, powered)) * 1000,
        apdus=len(in_tap),
        card_apdus=sum(1 for a in in_tap if a.slot == "card"),
        gap=1000 * sum(gaps) / max(1, len(gaps)),
        tail=(end - in_tap[-1].end) * 1000,
        sqlite={name: seconds * 1000 for name, seconds in sqlite.items()},
    )


class _PoweredCard(TracedCard):
    """Also stamps the end of power-on, so a modelled activation counts as device time."""

    def power_on(self) -> bytes:
        atr = super().power_on()
        self.log.control(self.slot, "powered")
        return atr


@dataclass
class _Stamps:
    """Commit time and SQLite time of the tap in progress, stamped in the pipeline thread."""

    committed: threading.Event = field(default_factory=threading.Event)
    commit_at: float = 0.0
    sqlite: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        self.committed.clear()
        self.sqlite = {}

    def timed(self, name: str, method: Callable[..., Any], commit: bool = False) -> Callable[..., Any]:
        @wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = method(*args, **kwargs)
            end = time.perf_counter()
            self.sqlite[name] = self.sqlite.get(name, 0.0) + end - start
            if commit:
                self.commit_at = end
                self.records.append(args[0])
                self.committed.set()
            return result

        return call


def _instrument(daemon: Daemon) -> _Stamps:
    """Wrap the queue and journal calls of the running daemon's services (its instances only)."""
    services = daemon.services
    if services is None:
        raise BenchFailure("the daemon has not started")
    stamps = _Stamps()
    queue, journal = services.queue, services.journal
    queue.enqueue = stamps.timed("queue.enqueue", queue.enqueue, commit=True)  # type: ignore[method-assign]
    queue.check_accepting = stamps.timed("queue.check_accepting", queue.check_accepting)  # type: ignore[method-assign]
    for name in JOURNAL_CALLS:
        setattr(journal, name, stamps.timed(f"journal.{name}", getattr(journal, name)))
    return stamps


def bench_config(workdir: Path, *, uplink: bool = True) -> Config:
    """config/demo.toml with its state in `workdir`, a fresh token key, and passback off;
    without its HTTP uplink when `uplink` is False (the taps stay queued)."""
    raw: dict[str, Any] = tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8"))
    if not uplink:
        del raw["uplink"]
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "token.key"
    key.write_text(secrets.token_hex(32))
    raw["terminal"]["state_dir"] = str(workdir)
    raw["terminal"]["token_key"] = f"file:{key}"
    raw["bus"]["passback_seconds"] = 0
    return parse_config(raw, str(DEMO_CONFIG))


Slot = Callable[[CardSide], AbstractContextManager[float]]


@contextmanager
def _vpcd_slot(card: CardSide) -> Iterator[float]:
    """The card in vpcd slot 0 for the block; yields the time it was put there."""
    link = VpcdLink(card, port=VPCD_PORTS[CARD_SLOT])
    inserted = time.perf_counter()
    link.insert()
    try:
        yield inserted
    finally:
        link.remove()


def _in_process_slot(reader: InProcessReader) -> Slot:
    @contextmanager
    def slot(card: CardSide) -> Iterator[float]:
        inserted = time.perf_counter()
        reader.insert(card)
        try:
            yield inserted
        finally:
            reader.remove()

    return slot


def _wait_state(daemon: Daemon, state: LoopState, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.loops[0].state is not state:
        if time.monotonic() > deadline:
            raise BenchFailure(f"the reader loop did not return to {state.value}")
        time.sleep(0.002)


def _daemon_taps(
    daemon: Daemon, slot: Slot, variant: Variant, psam: Swappable, log: TraceLog, count: int
) -> tuple[list[TapTiming], list[Apdu]]:
    """Run the daemon for WARMUP + count taps; the timings and the APDUs of the first measured tap."""
    daemon.start()
    timings: list[TapTiming] = []
    script: list[Apdu] = []
    try:
        stamps = _instrument(daemon)
        _wait_state(daemon, LoopState.WAITING)
        for n in range(WARMUP + count):
            psam.factory = variant.psam
            psam.renew()
            stamps.reset()
            log.clear()
            with slot(_PoweredCard(variant.card(), "card", log)) as inserted:
                if not stamps.committed.wait(TAP_TIMEOUT_S):
                    raise BenchFailure(f"tap {n}: no record committed within {TAP_TIMEOUT_S} s")
                record = stamps.records[-1]
                if record["result"] != "accepted" or record["fare"] is None:
                    raise BenchFailure(f"tap {n}: {record['result']} ({record['reason']}), not a paid ride")
                controls, apdus = log.snapshot()
            _wait_state(daemon, LoopState.WAITING)
            if n < WARMUP:
                continue
            if not script:
                script = [a for a in apdus if a.start <= stamps.commit_at]
            timings.append(_timing(inserted, controls, apdus, stamps.commit_at, stamps.sqlite))
    finally:
        daemon.stop()
    return timings, script


def _in_process_rows(variant: Variant, workdir: Path, count: int) -> list[dict[str, Any]]:
    """The daemon's own cost with no transport: the same taps on in-process readers (no pcscd)."""
    log = TraceLog()
    psam = Swappable(variant.psam)
    card_reader = InProcessReader("inprocess-card")
    sam_reader = InProcessReader("inprocess-sam", ReaderKind.SAM)
    sam_reader.insert(TracedCard(psam, "sam", log))
    daemon = Daemon(
        bench_config(workdir), readers=[card_reader], sam=sam_reader, notifier=SystemdNotifier(None)
    )
    taps, _ = _daemon_taps(daemon, _in_process_slot(card_reader), variant, psam, log, count)
    rows = []
    for metric, values in (
        ("tap: card powered -> record committed", [t.total for t in taps]),
        ("device time (card + PSAM)", [t.device for t in taps]),
        ("host time (total - device)", [t.host for t in taps]),
        ("host gap per APDU exchange", [t.gap for t in taps]),
        ("SQLite calls (journal + queue), all", [sum(t.sqlite.values()) for t in taps]),
        ("host time without SQLite (pipeline code, thread hand-offs)", [t.host - sum(t.sqlite.values()) for t in taps]),
    ):
        stats = percentiles(values)
        rows.append(
            {
                "variant": "in process, no PC/SC",
                "path": "daemon",
                "metric": metric,
                "unit": "ms",
                "n": stats["n"],
                "p50": stats["p50"],
                "p99": stats["p99"],
                "mean": stats["mean"],
                "max": stats["max"],
            }
        )
    return rows


def _check(hresult: int, what: str) -> None:
    if hresult != scard.SCARD_S_SUCCESS:
        raise BenchFailure(f"{what}: {scard.SCardGetErrorMessage(hresult)}")


def _wait_card(context: int, state: int, present: bool) -> int:
    """Block in SCardGetStatusChange, as a PC/SC client does, until the slot is (not) occupied."""
    while True:
        hresult, states = scard.SCardGetStatusChange(context, 5000, [(CARD_SLOT, state)])
        if hresult == scard.SCARD_E_TIMEOUT:
            raise BenchFailure("pcscd reported no card change within 5 s")
        _check(hresult, "SCardGetStatusChange")
        state = states[0][1] & ~scard.SCARD_STATE_CHANGED
        if bool(state & scard.SCARD_STATE_PRESENT) == present:
            return state


def _replay_taps(
    variant: Variant, psam: Swappable, log: TraceLog, script: list[Apdu], count: int
) -> tuple[list[TapTiming], int]:
    """Replay `script` on fresh cards with bare SCardTransmit calls; timings and differing answers."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    _check(hresult, "SCardEstablishContext")
    protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
    hresult, sam, sam_protocol = scard.SCardConnect(context, SAM_SLOT, scard.SCARD_SHARE_SHARED, protocols)
    _check(hresult, "SCardConnect PSAM")
    steps = [(a.slot, list(a.command), a.response) for a in script]
    timings: list[TapTiming] = []
    differing = 0
    try:
        state = _wait_card(context, scard.SCARD_STATE_UNAWARE, present=False)
        for n in range(WARMUP + count):
            psam.factory = variant.psam
            psam.renew()
            log.clear()
            answers: list[bytes] = []
            with _vpcd_slot(_PoweredCard(variant.card(), "card", log)) as inserted:
                state = _wait_card(context, state, present=True)
                hresult, card, card_protocol = scard.SCardConnect(
                    context, CARD_SLOT, scard.SCARD_SHARE_SHARED, protocols
                )
                _check(hresult, "SCardConnect card")
                for slot, command, _ in steps:
                    handle, protocol = (card, card_protocol) if slot == "card" else (sam, sam_protocol)
                    hresult, response = scard.SCardTransmit(handle, protocol, command)
                    _check(hresult, "SCardTransmit")
                    answers.append(bytes(response))
                end = time.perf_counter()
                scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
                controls, apdus = log.snapshot()
            state = _wait_card(context, state, present=False)
            differing += sum(answer != expected for answer, (_, _, expected) in zip(answers, steps, strict=True))
            if n >= WARMUP:
                timings.append(_timing(inserted, controls, apdus, end, {}))
    finally:
        scard.SCardDisconnect(sam, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(context)
    return timings, differing


def _rows(variant: str, daemon: list[TapTiming], replay: list[TapTiming], differing: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(path: str, metric: str, values: list[float], target: str = "") -> dict[str, float]:
        stats = percentiles(values)
        rows.append(
            {
                "variant": variant,
                "path": path,
                "metric": metric,
                "unit": "ms",
                "n": stats["n"],
                "p50": stats["p50"],
                "p99": stats["p99"],
                "mean": stats["mean"],
                "max": stats["max"],
                "target": target,
            }
        )
        return stats

    air_target = f"p50 <= {TARGET_AIR_REPEAT_MS:g} ms" if variant == "air model" else ""
    d = add("daemon", "tap: pcscd first contact -> record committed", [t.total for t in daemon], air_target)
    if air_target:
        rows[-1]["meets"] = d["p50"] <= TARGET_AIR_REPEAT_MS
    r = add("bare replay", "tap: pcscd first contact -> last answer", [t.total for t in replay])
    for path, taps in (("daemon", daemon), ("bare replay", replay)):
        add(path, "device time (card + PSAM)", [t.device for t in taps])
        add(path, "host time (total - device)", [t.host for t in taps])
        add(path, "first contact -> first APDU", [t.first_apdu for t in taps])
        add(path, "host gap per APDU exchange", [t.gap for t in taps])
    add("daemon", "last answer -> record committed", [t.tail for t in daemon])
    add("daemon", "SQLite calls (journal + queue), all", [sum(t.sqlite.values()) for t in daemon])
    for call in ("queue.check_accepting", *(f"journal.{name}" for name in JOURNAL_CALLS), "queue.enqueue"):
        add("daemon", f"  of which {call}", [t.sqlite.get(call, 0.0) for t in daemon])
    add("both", "presence detection (pcscd poll, excluded)", [t.presence for t in daemon + replay])
    overhead_p50 = d["p50"] - r["p50"]
    rows.append(
        {
            "variant": variant,
            "path": "daemon - replay",
            "metric": "daemon overhead per tap",
            "unit": "ms",
            "n": d["n"],
            "p50": overhead_p50,
            "p99": d["p99"] - r["p99"],
            "mean": d["mean"] - r["mean"],
            "target": f"p50 <= {TARGET_OVERHEAD_MS:g} ms, p99 <= {TARGET_OVERHEAD_P99_MS:g} ms",
            "meets": overhead_p50 <= TARGET_OVERHEAD_MS and d["p99"] - r["p99"] <= TARGET_OVERHEAD_P99_MS,
        }
    )
    rows.append(
        {
            "variant": variant,
            "path": "daemon / replay",
            "metric": "ratio",
            "unit": "x",
            "p50": d["p50"] / r["p50"],
            "p99": d["p99"] / r["p99"],
            "mean": d["mean"] / r["mean"],
        }
    )
    rows.append(
        {
            "variant": variant,
            "path": "daemon",
            "metric": "daemon share of the tap (overhead / daemon total)",
            "unit": "%",
            "p50": 100 * overhead_p50 / d["p50"],
            "p99": 100 * (d["p99"] - r["p99"]) / d["p99"],
        }
    )
    rows.append(
        {
            "variant": variant,
            "path": "bare replay",
            "metric": "replayed answers differing from the recorded ones",
            "unit": "APDUs",
            "n": len(replay),
            "p50": differing,
        }
    )
    if daemon:
        rows.append(_apdu_row(variant, "repeat rider", daemon[0]))
    return rows


def _apdu_row(variant: str, rider: str, tap: TapTiming) -> dict[str, Any]:
    """The commands of one tap, counted at the devices: card + PSAM, against the rider's target."""
    target = TARGET_APDUS[rider]
    return {
        "variant": variant,
        "path": "daemon",
        "metric": f"APDUs per tap, {rider} (card + PSAM)",
        "unit": "APDUs",
        "value": tap.apdus,
        "card": tap.card_apdus,
        "psam": tap.apdus - tap.card_apdus,
        "target": f"<= {target}",
        "meets": tap.apdus <= target,
    }


def _air_rows(variant: str, taps: list[TapTiming]) -> list[dict[str, Any]]:
    """A first rider's tap behind the link model: its time and its commands."""
    stats = percentiles([t.total for t in taps])
    row = {"variant": variant, "path": "daemon", "metric": "tap: pcscd first contact -> record committed"}
    return [{**row, "unit": "ms", **stats}, _apdu_row(variant, "first rider", taps[0])]


def _handoff_rows() -> list[dict[str, Any]]:
    """The thread hand-off every daemon APDU pays (ExchangeWorker.call), alone, hot and after idling.

    The daemon runs each exchange on a worker thread so that it can walk away at a deadline;
    the cost is two thread wake-ups per APDU. Between real APDUs the host idles for the
    card's milliseconds, and a wake-up from idle costs more than one from a busy loop.
    """
    worker = ExchangeWorker("bench")
    rows: list[dict[str, Any]] = []
    try:
        for label, pause, count in (("back to back", 0.0, 3000), ("after 5 ms idle", 0.005, 400)):
            samples = []
            for _ in range(count):
                if pause:
                    time.sleep(pause)
                start = time.perf_counter()
                worker.call(lambda: None, 2.0)
                samples.append((time.perf_counter() - start) * 1e6)
            stats = percentiles(samples)
            rows.append(
                {
                    "variant": "in process",
                    "path": "ExchangeWorker.call",
                    "metric": f"hand-off of a no-op call, {label}",
                    "unit": "us",
                    "n": stats["n"],
                    "p50": stats["p50"],
                    "p99": stats["p99"],
                    "mean": stats["mean"],
                    "max": stats["max"],
                }
            )
    finally:
        worker.close()
    return rows


def run() -> None:
    log = TraceLog()
    variants = _variants()
    psam = Swappable(variants[0].psam)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sscard-bench-tap-") as tmp,
        PcscdBench(),
        VpcdLink(TracedCard(psam, "sam", log), port=VPCD_PORTS[SAM_SLOT]),
    ):
        if not wait_for_presence(SAM_SLOT, present=True):
            raise BenchFailure("pcscd never saw the virtual PSAM")
        for index, variant in enumerate(variants):
            daemon = Daemon(bench_config(Path(tmp) / f"variant-{index}"), notifier=SystemdNotifier(None))
            daemon_taps, script = _daemon_taps(daemon, _vpcd_slot, variant, psam, log, TAPS)
            replay, differing = _replay_taps(variant, psam, log, script, TAPS)
            rows += _rows(variant.name, daemon_taps, replay, differing)
        first = _first_riders()
        daemon = Daemon(bench_config(Path(tmp) / "first-riders"), notifier=SystemdNotifier(None))
        first_taps, _ = _daemon_taps(daemon, _vpcd_slot, first, psam, log, TAPS)
        rows += _air_rows(first.name, first_taps)
        rows += _in_process_rows(variants[0], Path(tmp) / "in-process", IN_PROCESS_TAPS)
    rows += _handoff_rows()
    air, contact, processing = AirTiming(), ContactTiming(), CardProcessing()
    write(
        "tap_overhead",
        rows,
        notes=(
            f"{TAPS} measured taps per path and variant after {WARMUP} warm-up taps (BENCH_TAPS to change); "
            "each a full CAPP purchase of config/demo.toml (passback off) on a fresh 'sichuan' card; "
            "start = pcscd's first message to the card (its 400 ms presence poll is excluded and shown apart); "
            "daemon end = TapQueue.enqueue returned (record committed, synchronous=FULL); "
            "replay end = last SCardTransmit returned. Air model: ISO 14443-A at 106 kbit/s "
            f"(bit {air.bit_time * 1e6:.2f} us, {air.bits_per_byte} bits/byte, PCB+CRC {air.block_overhead} B, "
            f"FDT {air.frame_delay * 1e6:.0f} us, activation {air.activation() * 1000:.2f} ms), assumed chip times "
            + ", ".join(f"{k.value} {v * 1000:g} ms" for k, v in processing.times.items())
            + f"; PSAM T=0 at {contact.baud:g} baud, {contact.etu_per_char} etu per character."
        ),
    )


if __name__ == "__main__":
    run()
