"""The real daemon on the vpcd bench: terminal configurations, a settable clock, a tap driver.

A `Terminal` runs `reader.daemon.app.Daemon` as `sscard run` would, on pcscd's two vpcd
readers: cards are presented in slot 0 through `VpcdLink`, the PSAM sits in slot 1 for the
whole session. The daemon's clock is pinned (`ManualClock`) so that validity dates, age
bands and the passback and tearing windows are judged on a known day; scenarios move it on
explicitly. Records are taken both from the daemon's event hub as they are committed and,
at the end, from the queue file itself.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import socket
import threading
import tomllib
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartcard import scard

from protocols.tunion import TRANSACTION_RECORD_LAYOUT, TransactionRecord
from reader.backends.base import CardSide
from reader.config import Config, parse_config
from reader.daemon.app import Daemon
from reader.daemon.events import Subscription
from reader.daemon.feedback import Signal
from reader.service.notify import SystemdNotifier
from reader.uplink.queue import TapQueue
from sscard_sim.card import VirtualCard
from sscard_sim.cos import CardTorn
from sscard_sim.pcscd import VPCD_PORTS, VPCD_READERS, wait_for_presence
from sscard_sim.profile import CardProfile
from sscard_sim.vpcd import VpcdLink

SLOT_CARD, SLOT_PSAM = VPCD_READERS
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLES = {"bus": "demo.toml", "library": "library.toml", "pharmacy": "pharmacy.toml"}

TAP_DAY = dt.datetime(2026, 5, 20, 9, 0, tzinfo=zoneinfo.ZoneInfo("Asia/Shanghai"))
"""The day every scenario starts on: inside each bundled card's validity except the expired
card's (2024-01-01), and before the second-generation card's expiry (2026-07-01)."""

CARD_PROFILES = (
    "sichuan",
    "chongqing",
    "expired",
    "locked-transport",
    "no-transport",
    "low-balance",
    "elderly",
    "second-generation",
    "cloned",
)
"""Every bundled card profile (test_bus_taps checks the list against the bundle)."""

SIGNAL_TIMEOUT = 15.0
"""How long a tap may go without feedback before the scenario gives up (a hang, not a speed check)."""


class ManualClock:
    """The terminal's wall clock, moved only by the test."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> dt.datetime:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            return self._now


class LogBuffer:
    """A thread-safe sink for structlog's JSON lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._chunks.append(text)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered beyond the list itself."""

    def text(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]


def free_loopback_port() -> int:
    """A TCP port nobody listens on right now (the test namespace has a private loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def terminal_config(
    kind: str,
    workdir: Path,
    *,
    line: str | None = None,
    api_listen: str | None = None,
    relay: Path | None = None,
    token_key: Path | None = None,
    queue: dict[str, Any] | None = None,
    uplink: dict[str, Any] | None = None,
) -> Config:
    """The shipped example configuration of `kind`, moved onto the bench and into `workdir`.

    Its rules (fares, bands, windows, accepted regions, gate time) are the example's; the
    readers become the vpcd slots, the secrets files in `workdir` (the card-token key may be
    shared: it is per deployment, not per terminal), and the back-office uplink and hotlist
    source are left out unless `uplink` is given.
    """
    source = CONFIG_DIR / EXAMPLES[kind]
    raw: dict[str, Any] = tomllib.loads(source.read_text(encoding="utf-8"))
    workdir.mkdir(parents=True, exist_ok=True)
    key = token_key or workdir / "token.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32))
    raw["terminal"]["state_dir"] = str(workdir)
    raw["terminal"]["token_key"] = f"file:{key}"
    raw["readers"] = {"pcsc": {"contactless": SLOT_CARD, "sam": SLOT_PSAM}}
    if relay is not None:
        raw["readers"]["serial"] = {"relay": str(relay)}
    raw.pop("uplink", None)
    raw.pop("hotlist", None)
    if uplink is not None:
        raw["uplink"] = uplink
    if queue is not None:
        raw["queue"] = queue
    if line is not None:
        raw[kind]["line"] = line
    if "api" in raw or api_listen is not None:
        token = workdir / "api.token"
        if not token.exists():
            token.write_text(secrets.token_urlsafe(24))
        raw["api"] = {"listen": api_listen or raw["api"]["listen"], "token": f"file:{token}"}
    return parse_config(raw, str(source))


@dataclass(frozen=True)
class Purse:
    """What the T-Union purse of a virtual card holds (own money, without the overdraft)."""

    balance: int
    atc: int
    transactions: tuple[TransactionRecord, ...]

    @classmethod
    def of(cls, card: VirtualCard) -> Purse:
        memory = card.memory
        return cls(
            balance=memory.balance,
            atc=memory.offline_atc,
            transactions=tuple(TRANSACTION_RECORD_LAYOUT.parse(raw) for raw in memory.transactions),
        )

    def debits_since(self, earlier: Purse) -> list[TransactionRecord]:
        """The card's own log of the debits committed after `earlier` (newest first)."""
        return [record for record in self.transactions if record.atc > earlier.atc]


@dataclass
class Tap:
    """One presentation of a card: the feedback signals and the records committed meanwhile."""

    signals: tuple[Signal, ...]
    records: list[dict[str, Any]]
    before: Purse | None = None
    after: Purse | None = None

    @property
    def record(self) -> dict[str, Any]:
        """The tap's only record (most taps leave exactly one)."""
        assert len(self.records) == 1, f"expected one record, got {self.records}"
        return self.records[0]


class TracedCard:
    """Passes commands through and remembers them, and the one during which power was lost."""

    def __init__(self, card: CardSide) -> None:
        self.card = card
        self.commands: list[bytes] = []
        self.torn: bytes | None = None
        self.before_tear: list[bytes] = []

    def clear(self) -> None:
        self.commands.clear()
        self.torn = None
        self.before_tear = []

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def atr(self) -> bytes:
        return self.card.atr()

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        try:
            return self.card.transmit(apdu)
        except CardTorn:
            self.torn = apdu
            self.before_tear = self.commands[:-1]
            raise


@dataclass
class Terminal:
    """One daemon on the bench, with a probe on its feedback and its committed records."""

    config: Config
    clock: ManualClock
    signals: list[Signal] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    daemon: Daemon | None = None
    _subscription: Subscription | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Daemon:
        self.daemon = Daemon(self.config, echo=self._on_signal, notifier=SystemdNotifier(None))
        self.daemon.start()
        services = self.daemon.services
        assert services is not None
        services.clock = self.clock
        self._subscription = services.events.subscribe()
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.collect()

    def __enter__(self) -> Terminal:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tap(self, card: CardSide, *, signals: int = 1) -> Tap:
        """Present `card` until `signals` feedback signals came, then take it away for good.

        A torn card comes back on its own (vpcd dials again), so a tear and its return are
        one presentation with two signals. After the last signal the card is removed at once:
        a torn card whose signal was the last one never comes back.
        """
        purse_card = _virtual_card(card)
        before = Purse.of(purse_card) if purse_card is not None and purse_card.tunion else None
        start = len(self.signals)
        link = VpcdLink(card, port=VPCD_PORTS[SLOT_CARD])
        link.insert()
        try:
            with self._cond:
                arrived = self._cond.wait_for(lambda: len(self.signals) >= start + signals, SIGNAL_TIMEOUT)
        finally:
            link.remove()
            removed = wait_for_presence(SLOT_CARD, present=False)
        assert arrived, f"{len(self.signals) - start} of {signals} feedback signals within {SIGNAL_TIMEOUT} s"
        assert removed, "pcscd never saw the card leave"
        records = self.collect()
        after = Purse.of(purse_card) if purse_card is not None and purse_card.tunion else None
        with self._cond:
            shown = tuple(self.signals[start:])
        return Tap(shown, records, before, after)

    def _on_signal(self, signal: Signal) -> None:
        with self._cond:
            self.signals.append(signal)
            self._cond.notify_all()

    def collect(self) -> list[dict[str, Any]]:
        """The records committed since the last call (they are kept in `records` too)."""
        records: list[dict[str, Any]] = []
        while self._subscription is not None and (record := self._subscription.get(timeout=0)) is not None:
            records.append(dict(record))
        self.records.extend(records)
        return records


def _virtual_card(card: CardSide) -> VirtualCard | None:
    """The VirtualCard inside wrappers (tracing, tearing), if there is one."""
    while not isinstance(card, VirtualCard):
        inner = getattr(card, "card", None)
        if inner is None:
            return None
        card = inner
    return card


def committed(config: Config) -> list[dict[str, Any]]:
    """Every record in the terminal's queue file, in queue order (read after the daemon stopped)."""
    queue = TapQueue(config.queue, readonly=True)
    try:
        return [tap.record() for tap in queue.iter_taps()]
    finally:
        queue.close()


def card_events(reader: str) -> int:
    """pcsc-lite's count of card arrivals and departures in `reader` (high word of its event state).

    It tells a card that left and came back from one that never left, which the present
    flag alone cannot when both happen between two looks.
    """
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hresult == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hresult)
    try:
        hresult, states = scard.SCardGetStatusChange(context, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        assert hresult == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hresult)
        event_state: int = states[0][1]
        return (event_state >> 16) & 0xFFFF
    finally:
        scard.SCardReleaseContext(context)


def local_time(record: dict[str, Any]) -> dt.datetime:
    """A record's local time without its offset, as the card logs it."""
    return dt.datetime.fromisoformat(record["time"]).replace(tzinfo=None)


def personal_values(profile: CardProfile) -> set[str]:
    """Every personal datum a card profile holds, as the profile writes it."""
    ssse = profile.ssse
    values = {ssse.ssn, ssse.name, ssse.card_number, ssse.birth_date.isoformat(), ssse.card_id.hex().upper()}
    if ssse.name_extension:
        values.add(ssse.name_extension)
    if profile.tunion is not None:
        holder = profile.tunion.holder
        public = profile.tunion.public
        values |= {holder.holder_name, holder.holder_id, public.application_serial, public.card_number}
    if profile.ecash is not None:
        values.add(profile.ecash.pan)
    return {value for value in values if value}


def search_forms(value: str) -> set[str]:
    """The shapes a value can take in a JSON log line or record: as is, JSON-escaped, hex, BCD."""
    forms = {value, json.dumps(value)[1:-1], value.encode("utf-8").hex()}
    try:
        forms.add(value.encode("gbk").hex())
    except UnicodeEncodeError:
        forms.add(value)
    if len(value) == 10 and value[4] == value[7] == "-":
        forms.add(value.replace("-", ""))
    return {form.lower() for form in forms}


def leaks(text: str, values: set[str]) -> set[str]:
    """The personal values that appear in `text` in any of their shapes."""
    haystack = text.lower()
    return {value for value in values if any(form in haystack for form in search_forms(value))}


def iter_strings(value: Any) -> Iterator[str]:
    """Every key and scalar of a JSON document, as text."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from iter_strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_strings(item)
    elif value is not None:
        yield str(value)
