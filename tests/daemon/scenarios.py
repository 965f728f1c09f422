"""The end-to-end scenarios, each run once per test run and shared by the tests that judge it.

Every scenario runs the real daemon on the vpcd bench (see bench.py) and returns what an
observer could see: the feedback signals, the records as they were committed, the records in
the queue file afterwards, the cards' purses, and what the local API answered. The tests
decide; the scenarios only act, so one run serves the decision tests and the privacy test.
"""

from __future__ import annotations

import errno
import json
import os
import select
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from protocols.tunion import select_tunion
from reader.config import Config, read_secret
from reader.uplink.queue import TapQueue
from sscard_sim.card import VirtualCard
from sscard_sim.pcscd import wait_for_presence
from sscard_sim.tearing import TearingCard, When
from tests.daemon.bench import (
    CARD_PROFILES,
    SLOT_PSAM,
    TAP_DAY,
    ManualClock,
    Purse,
    Tap,
    Terminal,
    TracedCard,
    card_events,
    committed,
    free_loopback_port,
    terminal_config,
)
from tests.peripherals.pty_peripherals import PtyDevice
from tests.support.backoffice import BackOfficeServer
from tests.support.waiting import wait_until

INS_SELECT = 0xA4
INS_INITIALIZE = 0x50
INS_UPDATE_CAPP = 0xDC
INS_DEBIT = 0x54
INS_PSAM_VERIFY_MAC2 = 0x72
SELECT_EF05 = bytes.fromhex("00A4020002EF05")
PURCHASE_SELECT = 4
"""A card's first bus tap selects the SSSE, EF05, EF06, then the T-Union, once, for its files
and the purchase: the fourth SELECT is the e-purse's. Once the holder's band is kept (every
later tap of the card) EF06 is not selected, and the e-purse's SELECT is the third."""

NEXT_RIDE = 120.0
"""Seconds between two rides of one card: past the 60 s passback window of the examples."""


def cards() -> dict[str, VirtualCard]:
    return {name: VirtualCard.from_profile(name) for name in CARD_PROFILES}


# --------------------------------------------------------------------------- bus


@dataclass
class BusRun:
    config: Config
    other_line: Config
    token_key: bytes
    cards: dict[str, VirtualCard]
    first: dict[str, Tap]
    passback: Tap
    after_restart: Tap
    window_over: Tap
    transfer: Tap
    published: list[dict[str, Any]]
    queued: list[dict[str, Any]]
    queued_other_line: list[dict[str, Any]]


def bus(workdir: Path) -> BusRun:
    """Every card on a validator; the paid card again at once, after a restart, at the window's
    end; then a ride on another line within the transfer window."""
    clock = ManualClock(TAP_DAY)
    deployment_key = workdir / "token.key"
    config = terminal_config("bus", workdir / "line-812", token_key=deployment_key)
    deck = cards()
    with Terminal(config, clock) as validator:
        first = {name: validator.tap(deck[name]) for name in CARD_PROFILES}
        passback = validator.tap(deck["sichuan"])
    published = validator.records
    clock.advance(30)
    with Terminal(config, clock) as restarted:
        after_restart = restarted.tap(deck["sichuan"])
        clock.advance(30)
        window_over = restarted.tap(deck["sichuan"])
    published = published + restarted.records
    clock.advance(10 * 60)
    other_line = terminal_config("bus", workdir / "line-815", line="815", token_key=deployment_key)
    with Terminal(other_line, clock) as next_bus:
        transfer = next_bus.tap(deck["chongqing"])
    return BusRun(
        config=config,
        other_line=other_line,
        token_key=read_secret(config.terminal.token_key),
        cards=deck,
        first=first,
        passback=passback,
        after_restart=after_restart,
        window_over=window_over,
        transfer=transfer,
        published=published,
        queued=committed(config),
        queued_other_line=committed(other_line),
    )


# --------------------------------------------------------------------------- library


@dataclass
class LibraryRun:
    config: Config
    token_key: bytes
    first: dict[str, Tap]
    relay_bytes: bytes
    streamed: list[dict[str, Any]]
    queued: list[dict[str, Any]]


class EventListener:
    """A gate controller on the local API's event stream (GET /events), in a thread."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="event-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self.ready.wait(5), "the event stream did not open"

    def join(self) -> None:
        self._thread.join(10)

    def _listen(self) -> None:
        try:
            with self.client.stream("GET", "/v1/events") as response:
                response.raise_for_status()
                self.ready.set()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line.removeprefix("data: ")))
        except httpx.HTTPError:
            # The daemon stopping ends the stream; what arrived before is what counts.
            self.ready.set()


def _read_all(fd: int) -> bytes:
    """What a pty master holds; EIO once the slave side is closed and everything was read."""
    data = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        data += chunk
    return data


def library(workdir: Path) -> LibraryRun:
    """Every card at a gate with its relay on a serial line, a controller on the event stream."""
    relay = PtyDevice(workdir / "ttyRELAY")
    relay.plug()
    socket_path = workdir / "api.sock"
    config = terminal_config("library", workdir / "gate", api_listen=f"unix:{socket_path}", relay=workdir / "ttyRELAY")
    token = read_secret(config.api.token).decode() if config.api else ""
    deck = cards()
    relay_bytes = b""
    try:
        terminal = Terminal(config, ManualClock(TAP_DAY))
        terminal.start()
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://gate",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        listener = EventListener(client)
        try:
            listener.start()
            first = {name: terminal.tap(deck[name]) for name in CARD_PROFILES}
        finally:
            terminal.stop()
            listener.join()
            client.close()
        assert relay.master is not None
        relay_bytes = _read_all(relay.master)
    finally:
        relay.unplug()
    return LibraryRun(
        config=config,
        token_key=read_secret(config.terminal.token_key),
        first=first,
        relay_bytes=relay_bytes,
        streamed=listener.events,
        queued=committed(config),
    )


# --------------------------------------------------------------------------- pharmacy


@dataclass
class PharmacyRun:
    config: Config
    token_key: bytes
    listen: str
    first: dict[str, Tap]
    answers: dict[str, dict[str, Any]]
    """The read-card answer the POS got for each card it was given."""
    """For each answer, the cards tapped while that request was waiting."""
    unauthorised_status: int
    status_code_of: dict[str, int]
    queued: list[dict[str, Any]]


PHARMACY_ORDER = (
    "expired",
    "sichuan",
    "no-transport",
    "cloned",
    "chongqing",
    "locked-transport",
    "low-balance",
    "elderly",
    "second-generation",
)
"""The order of the pharmacy taps: refused cards between accepted ones."""


def pharmacy(workdir: Path) -> PharmacyRun:
    """A POS asks the local API before each card: the holder of an accepted card, the reason of a refused one."""
    listen = f"127.0.0.1:{free_loopback_port()}"
    config = terminal_config("pharmacy", workdir / "pos", api_listen=listen)
    token = read_secret(config.api.token).decode() if config.api else ""
    deck = cards()
    answers: dict[str, dict[str, Any]] = {}
    status_code_of: dict[str, int] = {}
    first: dict[str, Tap] = {}
    with (
        Terminal(config, ManualClock(TAP_DAY)) as terminal,
        httpx.Client(base_url=f"http://{listen}", headers={"Authorization": f"Bearer {token}"}, timeout=30) as pos,
        ThreadPoolExecutor(max_workers=1) as asker,
    ):
        unauthorised = httpx.post(f"http://{listen}/v1/read-card", json={"timeout": 1}).status_code
        assert terminal.daemon is not None and terminal.daemon.services is not None
        requests = terminal.daemon.services.card_requests
        assert requests is not None
        for name in PHARMACY_ORDER:
            pending: Future[httpx.Response] = asker.submit(pos.post, "/v1/read-card", json={"timeout": 20})
            assert wait_until(lambda: requests.waiting, 5), "the POS request never reached the daemon"
            first[name] = terminal.tap(deck[name])
            response = pending.result(timeout=10)
            status_code_of[name] = response.status_code
            answers[name] = response.json()
    return PharmacyRun(
        config=config,
        token_key=read_secret(config.terminal.token_key),
        listen=listen,
        first=first,
        answers=answers,
        unauthorised_status=unauthorised,
        status_code_of=status_code_of,
        queued=committed(config),
    )


# --------------------------------------------------------------------------- tearing


@dataclass(frozen=True)
class TearStep:
    """Where power is lost: the `occurrence`-th command `ins`, before or after the card runs it."""

    name: str
    ins: int
    when: When
    occurrence: int = 1


CARD_TEARS = (
    TearStep("select", INS_SELECT, "before", PURCHASE_SELECT),
    TearStep("select", INS_SELECT, "after", PURCHASE_SELECT),
    TearStep("initialize", INS_INITIALIZE, "before"),
    TearStep("initialize", INS_INITIALIZE, "after"),
    TearStep("update capp data cache", INS_UPDATE_CAPP, "before"),
    TearStep("update capp data cache", INS_UPDATE_CAPP, "after"),
    TearStep("debit", INS_DEBIT, "before"),
    TearStep("debit", INS_DEBIT, "after"),
)


@dataclass
class TornTap:
    step: TearStep
    tap: Tap
    torn_command: bytes | None
    commands_before_tear: list[bytes]
    proof_tac: bytes | None
    pending_after: int


@dataclass
class TearingRun:
    config: Config
    token_key: bytes
    sichuan: VirtualCard
    chongqing: VirtualCard
    sichuan_start: Purse
    chongqing_start: Purse
    card_tears: list[TornTap]
    psam_tear: Tap
    psam_torn: bool
    psam_back: bool
    again_after_psam_tear: Tap
    gone: Tap
    pending_inside_window: int
    records_inside_window: int
    settled_by_supervise: list[dict[str, Any]]
    pending_after_supervise: int
    gone_again: Tap
    pending_before_restart: int
    pending_after_restart: int
    published: list[dict[str, Any]]
    queued: list[dict[str, Any]]
    window: float


def tearing(workdir: Path, psam: TearingCard) -> TearingRun:
    """One card pulled at every step of the purchase and brought back; the PSAM pulled at MAC2;
    a card that never comes back, settled by supervise() and by the next start."""
    clock = ManualClock(TAP_DAY)
    config = terminal_config("bus", workdir / "validator")
    assert config.bus is not None
    window = config.bus.tearing_window_seconds
    sichuan_card = VirtualCard.from_profile("sichuan")
    tearing_card = TearingCard(sichuan_card)
    sichuan = TracedCard(tearing_card)
    chongqing_card = VirtualCard.from_profile("chongqing")
    chongqing = TearingCard(chongqing_card)
    sichuan_start, chongqing_start = Purse.of(sichuan_card), Purse.of(chongqing_card)
    torn_taps: list[TornTap] = []
    published: list[dict[str, Any]] = []
    with Terminal(config, clock) as terminal:
        daemon = terminal.daemon
        assert daemon is not None
        for number, step in enumerate(CARD_TEARS):
            clock.advance(NEXT_RIDE)
            sichuan.clear()
            kept = number > 0 and step.ins == INS_SELECT  # the band is kept from the first tap
            tearing_card.plan(ins=step.ins, when=step.when, occurrence=step.occurrence - kept)
            tap = terminal.tap(sichuan, signals=2)
            proof = sichuan_card.memory.last_proof
            torn_taps.append(
                TornTap(
                    step=step,
                    tap=tap,
                    torn_command=sichuan.torn,
                    commands_before_tear=sichuan.before_tear,
                    proof_tac=proof.tac if proof else None,
                    pending_after=daemon.status()["pending_debits"],
                )
            )

        # The PSAM leaves at MAC2 verification: the card has debited, the PSAM cannot say more.
        clock.advance(NEXT_RIDE)
        psam_events = card_events(SLOT_PSAM)
        psam.plan(ins=INS_PSAM_VERIFY_MAC2, when="before")
        psam_tear = terminal.tap(sichuan)
        psam_torn = psam.torn
        # vpcd dials the PSAM again: wait until pcscd has seen it leave and come back.
        psam_back = wait_until(lambda: card_events(SLOT_PSAM) >= psam_events + 2, 5) and wait_for_presence(
            SLOT_PSAM, present=True
        )
        again_after_psam_tear = terminal.tap(sichuan)

        # A card pulled after its debit committed that does not come back.
        clock.advance(NEXT_RIDE)
        chongqing.plan(ins=INS_DEBIT, when="after")
        gone = terminal.tap(chongqing)
        clock.advance(window - 1)
        daemon.supervise()
        pending_inside_window = daemon.status()["pending_debits"]
        records_inside_window = len(terminal.collect())
        clock.advance(2)
        daemon.supervise()
        settled_by_supervise = terminal.collect()
        pending_after_supervise = daemon.status()["pending_debits"]

        # Once more, and the daemon stops before the window ends: the next start settles it.
        clock.advance(NEXT_RIDE)
        chongqing.plan(ins=INS_DEBIT, when="after")
        gone_again = terminal.tap(chongqing)
        pending_before_restart = daemon.status()["pending_debits"]
    published = terminal.records
    # The restarted daemon settles on its own clock, the wall clock: months after TAP_DAY.
    with Terminal(config, ManualClock(TAP_DAY)) as restarted:
        assert restarted.daemon is not None
        pending_after_restart = restarted.daemon.status()["pending_debits"]
    return TearingRun(
        config=config,
        token_key=read_secret(config.terminal.token_key),
        sichuan=sichuan_card,
        chongqing=chongqing_card,
        sichuan_start=sichuan_start,
        chongqing_start=chongqing_start,
        card_tears=torn_taps,
        psam_tear=psam_tear,
        psam_torn=psam_torn,
        psam_back=psam_back,
        again_after_psam_tear=again_after_psam_tear,
        gone=gone,
        pending_inside_window=pending_inside_window,
        records_inside_window=records_inside_window,
        settled_by_supervise=settled_by_supervise,
        pending_after_supervise=pending_after_supervise,
        gone_again=gone_again,
        pending_before_restart=pending_before_restart,
        pending_after_restart=pending_after_restart,
        published=published,
        queued=committed(config),
        window=window,
    )


def select_purchase_app() -> bytes:
    """The SELECT of the T-Union e-purse as the pipeline sends it."""
    return select_tunion().to_bytes()


# --------------------------------------------------------------------------- out of service


@dataclass
class OutOfServiceRun:
    config: Config
    token_key: bytes
    sichuan: VirtualCard
    torn: Tap
    first: Tap
    second: Tap
    refused: Tap
    status_when_full: dict[str, Any]
    status_line_when_full: str
    supervise_error: str | None
    pending_while_full: int
    drained: bool
    delivered_before_resume: list[dict[str, Any]]
    settled: list[dict[str, Any]]
    resumed: Tap
    delivered: dict[tuple[str, str], dict[str, Any]]
    queued: list[dict[str, Any]]
    published: list[dict[str, Any]] = field(default_factory=list)


def out_of_service(workdir: Path) -> OutOfServiceRun:
    """A queue bound of two taps while the back office does not answer; then it answers."""
    clock = ManualClock(TAP_DAY)
    backoffice = BackOfficeServer()  # listening, but not answering until start()
    uplink = {
        "http": {
            "enabled": True,
            "url": backoffice.url,
            "read_timeout_s": 60.0,
            "backoff": {"initial_s": 0.05, "max_s": 0.2},
        }
    }
    config = terminal_config("bus", workdir / "validator", queue={"max_taps": 2}, uplink=uplink)
    assert config.bus is not None
    deck = cards()
    chongqing = TearingCard(deck["chongqing"])
    try:
        with Terminal(config, clock) as terminal:
            daemon = terminal.daemon
            assert daemon is not None
            chongqing.plan(ins=INS_DEBIT, when="after")
            torn = terminal.tap(chongqing)  # journalled, not recorded: the card may come back
            first = terminal.tap(deck["sichuan"])
            second = terminal.tap(deck["elderly"])
            clock.advance(NEXT_RIDE)
            refused = terminal.tap(deck["sichuan"])
            status_when_full = dict(daemon.status())
            status_line_when_full = daemon.status_line()
            clock.advance(config.bus.tearing_window_seconds + 1)
            supervise_error = None
            try:
                daemon.supervise()
            except Exception as error:  # noqa: BLE001 - the test reports what escaped supervise()
                supervise_error = repr(error)
            pending_while_full = daemon.status()["pending_debits"]
            backoffice.start()
            assert daemon.services is not None
            queue: TapQueue = daemon.services.queue
            drained = wait_until(lambda: queue.status().depth == 0, 15)
            delivered_before_resume = list(backoffice.taps.values())
            daemon.supervise()
            settled = terminal.collect()
            resumed = terminal.tap(deck["sichuan"])
            backoffice.wait_for(len(terminal.records), 15)
        published = terminal.records
    finally:
        backoffice.stop()
    return OutOfServiceRun(
        config=config,
        token_key=read_secret(config.terminal.token_key),
        sichuan=deck["sichuan"],
        torn=torn,
        first=first,
        second=second,
        refused=refused,
        status_when_full=status_when_full,
        status_line_when_full=status_line_when_full,
        supervise_error=supervise_error,
        pending_while_full=pending_while_full,
        drained=drained,
        delivered_before_resume=delivered_before_resume,
        settled=settled,
        resumed=resumed,
        delivered=dict(backoffice.taps),
        queued=committed(config),
        published=published,
    )
