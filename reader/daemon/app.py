"""The daemon: opens everything, runs one driver loop per reader, and reports its health.

Start order follows what must be true before the terminal says READY: the queue opened and
checked, the journal's leftover debits settled, the hotlist loaded, the PSAM slot and the
readers opened, the uplinks running. The main thread then only supervises: it feeds the
systemd watchdog while every reader loop and uplink is alive, refreshes the status line,
records torn debits whose card did not come back, and handles SIGTERM (finish the tap in
progress, flush, exit 0) and SIGHUP (reload the hotlist and the fare rules).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from reader.backends.base import Reader, ReaderError
from reader.backends.loop import ReaderLoop
from reader.backends.nfc import NfcReader
from reader.backends.pcsc import contactless_reader, sam_reader
from reader.backends.sam import SamSlot
from reader.config import Config, ConfigError, load_config, read_secret
from reader.daemon.api import ApiContext, LocalApi
from reader.daemon.charge import settle_expired
from reader.daemon.events import CardRequests, EventHub
from reader.daemon.feedback import Feedback, Signal
from reader.daemon.journal import Journal
from reader.daemon.pipeline import TapPipeline
from reader.daemon.services import Services
from reader.log import get_logger
from reader.peripherals.display import LineDisplay
from reader.peripherals.relay import GateRelay
from reader.service.notify import NotifyError, SystemdNotifier, watchdog_interval
from reader.uplink import create_hotlist_sync, create_parameter_sync, create_uplink
from reader.uplink.errors import HotlistFormatError, UplinkError
from reader.uplink.hotlist import HotlistStore
from reader.uplink.hotlist import public_key as hotlist_public_key
from reader.uplink.parameters import ParameterStore, parameter_key
from reader.uplink.queue import TapQueue
from reader.uplink.worker import UplinkWorker

log = get_logger(component="daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LOOP_STOP_TIMEOUT = 15.0
DEFAULT_GATE_SECONDS = 3.0
"""How long the tap in progress may take to finish on SIGTERM (the unit allows TimeoutStopSec=20s)."""

RESTART_SECTIONS = ("terminal", "readers", "queue", "uplink", "hotlist", "api")
"""Sections that the running daemon has built its parts from: a change waits for a restart."""


def _note_signal(number: int, frame: object) -> None:
    """The signal is taken from the wakeup pipe by the main loop; nothing is done here."""


def _private_directory(path: Path) -> None:
    """Create the state directory owner-only (0700): it holds the queue and the journal.

    A directory that exists already is the operator's (or systemd's StateDirectoryMode=):
    it is left as it is, with a warning when others may read it.
    """
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)
    elif path.stat().st_mode & 0o077:
        log.warning("state_directory_readable_by_others", path=str(path), mode=oct(path.stat().st_mode & 0o777))


def _hotlist_key(config: Config) -> Ed25519PublicKey | None:
    """The back office's key, so a signed list dropped at the hotlist path is checked on SIGHUP too."""
    raw = config.hotlist.public_key_bytes()
    return None if raw is None else hotlist_public_key(raw)


def _gate_seconds(config: Config) -> float:
    """How long the gate relay stays open: the gate kind's setting (library, venue)."""
    gate = config.library or config.venue
    return gate.gate_open_seconds if gate is not None else DEFAULT_GATE_SECONDS


def tearing_window(config: Config) -> dt.timedelta:
    """How long a torn debit waits for its card: the charging kind's own window (bus, canteen)."""
    charging = config.bus or config.canteen
    return dt.timedelta(seconds=charging.tearing_window_seconds if charging else 0)


def _parameter_store(config: Config) -> ParameterStore | None:
    """The store of the back office's parameters: a bus validator that takes them, or kept one."""
    settings = config.parameters
    if config.bus is None or (settings.source == "none" and not settings.path.exists()):
        return None
    try:
        key = parameter_key(settings, config.hotlist)
    except ValueError as error:
        # Only a bundle kept from an earlier configuration gets here (check-config requires
        # the key with a source): without the key it cannot be trusted, so the TOML applies.
        log.warning("parameters_kept_but_no_key", path=str(settings.path), error=str(error))
        return None
    return ParameterStore(settings.path, key, line=config.bus.line)


def default_readers(config: Config) -> tuple[list[Reader], Reader | None]:
    """The tap readers and the SAM reader that the configuration names."""
    readers: list[Reader] = []
    pcsc = config.readers.pcsc
    if pcsc.enabled:
        readers.append(contactless_reader(pcsc))
    if config.readers.nfc.path:
        readers.append(NfcReader(config.readers.nfc.path))
    return readers, (sam_reader(pcsc) if pcsc.enabled else None)


class Daemon:
    """The running terminal. `start()`, then `run_until_stopped()` or `stop()`."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        readers: list[Reader] | None = None,
        sam: Reader | None = None,
        echo: Callable[[Signal], None] | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        if readers is None:
            readers, default_sam = default_readers(config)
            sam = sam if sam is not None else default_sam
        self.readers = readers
        self.sam_reader = sam
        self.echo = echo
        self.notifier = notifier or SystemdNotifier.from_environment()
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self._signal_pipe: tuple[int, int] | None = None
        self._feedback_started = False
        self.loops: list[ReaderLoop] = []
        self.uplinks: list[UplinkWorker] = []
        self.api: LocalApi | None = None
        self.services: Services | None = None
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        config = self.config
        _private_directory(config.terminal.state_dir)
        queue = TapQueue(config.queue)
        token_key = read_secret(config.terminal.token_key)
        journal = Journal(queue, token_key)
        journal.adopt(config.terminal.state_dir / "journal.sqlite3")
        feedback = Feedback(
            display=self._display(),
            relay=self._relay(),
            gate_seconds=_gate_seconds(config),
            echo=self.echo,
        )
        self.services = Services(
            config=config,
            token_key=token_key,
            queue=queue,
            hotlist=HotlistStore(config.hotlist.path, public_key=_hotlist_key(config)),
            journal=journal,
            psam=SamSlot(self.sam_reader) if self.sam_reader is not None else None,
            feedback=feedback,
            events=EventHub(),
            card_requests=CardRequests() if config.terminal.profile == "pharmacy" else None,
            parameters=_parameter_store(config),
        )
        self._settle_torn_debits()
        self.uplinks = self._uplinks(queue)
        for worker in self.uplinks:
            worker.start()
        feedback.start()
        self._feedback_started = True
        self._open_psam()
        for reader in self.readers:
            pipeline = TapPipeline(self.services, reader.name, config.readers.pcsc.transmit_timeout)
            loop = ReaderLoop(reader, pipeline, new_tap_id=self.services.tap_ids.next)
            loop.start()
            self.loops.append(loop)
        if config.api is not None:
            context = ApiContext(
                read_secret(config.api.token).decode(), self.status, self.services.events, self.services.card_requests
            )
            self.api = LocalApi(config.api.listen, context)
            self.api.start()
        self.notifier.ready(self.status_line())
        log.info(
            "daemon_ready",
            terminal=config.terminal.id,
            profile=config.terminal.profile,
            readers=[reader.name for reader in self.readers],
            startup_s=round(time.monotonic() - self.started_at, 3),
        )

    def stop(self) -> None:
        """Finish the tap in progress on every reader, stop the uplinks, close the queue.

        Also undoes a start that failed half-way, so only what was started is stopped. A
        manager that cannot be told is no reason to abandon the tap in progress.
        """
        try:
            self.notifier.stopping()
        except NotifyError as error:
            log.error("notify_failed", error=str(error))
        for loop in self.loops:
            if not loop.stop(timeout=LOOP_STOP_TIMEOUT):
                log.error("reader_loop_not_stopped", reader=loop.reader.name, timeout_s=LOOP_STOP_TIMEOUT)
        if self.api is not None:
            self.api.stop()
        for worker in self.uplinks:
            worker.stop()
        if self.services is not None:
            if self._feedback_started:
                self.services.feedback.stop()
            if self.services.psam is not None:
                self.services.psam.close()
            self.services.queue.close()
        for reader in self.readers:
            reader.close()
        log.info("daemon_stopped")

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Take SIGTERM, SIGINT and SIGHUP over for `run_until_stopped` (main thread only).

        The handlers only note the signal: the C-level handler writes its number to a pipe
        that the main loop waits on. Setting a threading.Event from a Python signal handler
        can deadlock, since the handler runs in the main thread, possibly while that thread
        holds the event's lock inside `Event.wait`.
        """
        if self._signal_pipe is not None:
            yield
            return
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        previous = {number: signal.signal(number, _note_signal) for number in (*STOP_SIGNALS, signal.SIGHUP)}
        self._signal_pipe = (read_fd, write_fd)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            signal.set_wakeup_fd(previous_fd)
            self._signal_pipe = None
            os.close(read_fd)
            os.close(write_fd)

    def run_until_stopped(self) -> None:
        """Supervise in the calling (main) thread until SIGTERM or SIGINT, then stop in order."""
        with self.signals():
            assert self._signal_pipe is not None
            read_fd = self._signal_pipe[0]
            interval = watchdog_interval()
            tick = min(1.0, interval / 2) if interval else 1.0
            try:
                while not self.stopping.is_set():
                    ready, _, _ = select.select([read_fd], [], [], tick)
                    if ready:
                        self._take_signals(read_fd)
                    if not self.stopping.is_set():
                        self.supervise()
            finally:
                self.stop()

    def _take_signals(self, read_fd: int) -> None:
        try:
            numbers = os.read(read_fd, 64)
        except BlockingIOError:
            return
        for number in numbers:
            if number in STOP_SIGNALS:
                log.info("daemon_stopping", signal=signal.Signals(number).name)
                self.stopping.set()
            elif number == signal.SIGHUP:
                self.reload_requested.set()

    def supervise(self) -> None:
        """One round of the main loop: reload if asked, settle stale tears, feed the watchdog."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()
        try:
            self._settle_torn_debits()
            status = self.status_line()
        except UplinkError as error:
            # Storage trouble (disk full, I/O error) puts the terminal out of service, which
            # the taps already say; the daemon stays up to serve again when it clears.
            log.error("daemon_storage_failed", error_type=type(error).__name__, error=str(error))
            status = f"out of service: storage: {error}"
        if self.healthy():
            self.notifier.watchdog()
        else:
            log.error("daemon_unhealthy", dead=self.dead_workers())
        self.notifier.status(status)

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        """SIGHUP: a fresh hotlist from disk and the rules of a re-read configuration.

        Only the terminal kind's rules ([bus], [library], [pharmacy]) take effect at once;
        a change anywhere else is logged as needing a restart and the running value kept.
        """
        services = self._services()
        self.notifier.reloading()
        path = self.config.hotlist.path
        try:
            document = path.read_bytes()
        except FileNotFoundError:
            document = None
        except OSError as error:
            document = None
            log.error("reload_hotlist_unreadable", error=str(error))
        if document is not None:
            try:
                services.hotlist.install(document, services.hotlist.etag)
            except HotlistFormatError as error:
                log.error("reload_hotlist_refused", error=str(error))
        if self.config_path is not None:
            try:
                fresh = load_config(self.config_path)
            except ConfigError as error:
                log.error("reload_config_refused", error=str(error))
            else:
                kept = {name: getattr(self.config, name) for name in RESTART_SECTIONS}
                changed = [name for name, value in kept.items() if getattr(fresh, name) != value]
                if changed:
                    log.warning("reload_needs_restart", sections=changed)
                self.config = fresh.model_copy(update=kept)
                services.config = self.config
                if self.config.library is not None:
                    services.feedback.gate_seconds = self.config.library.gate_open_seconds
        self.notifier.ready(self.status_line())
        log.info("daemon_reloaded", hotlist_version=services.hotlist.version)

    # ------------------------------------------------------------------ health

    def dead_workers(self) -> list[str]:
        dead = [loop.reader.name for loop in self.loops if not loop.alive()]
        dead += [worker.name for worker in self.uplinks if not worker.is_alive()]
        if self.services is not None and not self.services.feedback.alive():
            dead.append("feedback")
        return dead

    def healthy(self) -> bool:
        return not self.dead_workers()

    def status(self) -> Mapping[str, Any]:
        services = self._services()
        return {
            "terminal": self.config.terminal.id,
            "profile": self.config.terminal.profile,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "healthy": self.healthy(),
            "readers": [
                {**dataclasses.asdict(loop.status()), "state": loop.status().state.value} for loop in self.loops
            ],
            "queue": services.queue.status().as_dict(),
            "uplinks": {worker.name: worker.stats().as_dict() for worker in self.uplinks},
            "hotlist_version": services.hotlist.version,
            "pending_debits": len(services.journal.all_pending()),
            "psam": self._psam_status(),
        }

    def _psam_status(self) -> Mapping[str, Any] | None:
        """The PSAM slot for the depot page and the metrics: whether its channel is open, how often it opened."""
        psam = self._services().psam
        if psam is None:
            return None
        # SamSlot keeps its channel private; reading the reference needs no lock.
        return {"reader": psam.name, "open": psam._channel is not None, "generation": psam.generation}

    def status_line(self) -> str:
        services = self._services()
        queue = services.queue.status()
        readers = sum(loop.alive() for loop in self.loops)
        state = "out of service" if queue.out_of_service else "in service"
        return (
            f"{state}; readers {readers}/{len(self.loops)}; queue {queue.depth}; "
            f"hotlist {services.hotlist.version or 'none'}"
        )

    # ------------------------------------------------------------------ parts

    def _services(self) -> Services:
        if self.services is None:
            raise RuntimeError("the daemon has not been started")
        return self.services

    def _open_psam(self) -> None:
        """Open the PSAM channel before READY, so a missing PSAM shows at start, not at the first tap."""
        psam = self._services().psam
        if psam is None:
            return
        try:
            psam.channel()
        except ReaderError as error:
            log.warning("psam_not_open_at_start", reader=psam.name, error=str(error))

    def _settle_torn_debits(self) -> None:
        window = tearing_window(self.config)
        reader = self.readers[0].name if self.readers else "none"
        settle_expired(self._services(), window, reader)

    def _uplinks(self, queue: TapQueue) -> list[UplinkWorker]:
        """The one uplink that drains the queue, and the hotlist sync, as configured."""
        config = self.config
        uplink = create_uplink(
            queue, http=config.uplink.http, mqtt=config.uplink.mqtt, terminal_id=config.terminal.id
        )
        hotlist = create_hotlist_sync(
            self._services().hotlist, config.hotlist, mqtt=config.uplink.mqtt, terminal_id=config.terminal.id
        )
        store = self._services().parameters
        parameters = None
        if store is not None:
            parameters = create_parameter_sync(
                store, config.parameters, mqtt=config.uplink.mqtt, terminal_id=config.terminal.id
            )
        return [worker for worker in (uplink, hotlist, parameters) if worker is not None]

    def _display(self) -> LineDisplay | None:
        settings = self.config.readers.serial.display
        if settings is None:
            return None
        return LineDisplay(
            settings.device,
            rows=settings.rows,
            columns=settings.columns,
            baudrate=settings.baudrate,
            answer_timeout=settings.answer_timeout,
        )

    def _relay(self) -> GateRelay | None:
        settings = self.config.readers.serial.relay
        if settings is None:
            return None
        return GateRelay(settings.device, channel=settings.channel, baudrate=settings.baudrate)
