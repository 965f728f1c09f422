"""The daemon: opens everything, runs one driver loop per reader, and reports its health.

Start order follows what must be true before the terminal says READY: the queue opened and
checked, the journal's leftover debits settled, the hotlist loaded, the PSAM slot and the
readers opened, the uplinks running. The main thread then only supervises: it feeds the
systemd watchdog while every reader loop and uplink is alive, refreshes the status line,
records torn debits whose card did not come back, and handles SIGTERM (finish the tap in
progress, flush, exit 0) and SIGHUP (reload the hotlist and the fare rules).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reader.backends.base import Reader
from reader.backends.loop import ReaderLoop
from reader.backends.nfc import NfcReader
from reader.backends.sam import SamSlot
from reader.config import Config, ConfigError, load_config, read_secret
from reader.daemon.api import ApiContext, LocalApi
from reader.daemon.events import CardRequests, EventHub
from reader.daemon.feedback import Feedback, Signal
from reader.daemon.journal import Journal
from reader.daemon.pipeline import Services, TapPipeline, settle_expired
from reader.log import get_logger
from reader.peripherals.display import LineDisplay
from reader.peripherals.relay import GateRelay
from reader.service.notify import SystemdNotifier, watchdog_interval
from reader.uplink import create_hotlist_sync, create_uplink
from reader.uplink.errors import HotlistFormatError
from reader.uplink.hotlist import HotlistStore
from reader.uplink.queue import TapQueue
from reader.uplink.worker import UplinkWorker

log = get_logger(component="daemon")


def default_readers(config: Config) -> tuple[list[Reader], Reader | None]:
    """The tap readers and the SAM reader that the configuration names."""
    readers: list[Reader] = []
    pcsc = config.readers.pcsc
    if pcsc.enabled:
        readers.append(pcsc.contactless_reader())
    if config.readers.nfc.path:
        readers.append(NfcReader(config.readers.nfc.path))
    return readers, (pcsc.sam_reader() if pcsc.enabled else None)


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
        self.loops: list[ReaderLoop] = []
        self.uplinks: list[UplinkWorker] = []
        self.api: LocalApi | None = None
        self.services: Services | None = None
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        config = self.config
        config.terminal.state_dir.mkdir(parents=True, exist_ok=True)
        queue = TapQueue(config.queue)
        journal = Journal(config.terminal.state_dir / "journal.sqlite3")
        feedback = Feedback(
            display=self._display(),
            relay=self._relay(),
            gate_seconds=(config.library.gate_open_seconds if config.library else 3.0),
            echo=self.echo,
        )
        self.services = Services(
            config=config,
            token_key=read_secret(config.terminal.token_key),
            queue=queue,
            hotlist=HotlistStore(config.hotlist.path),
            journal=journal,
            psam=SamSlot(self.sam_reader) if self.sam_reader is not None else None,
            feedback=feedback,
            events=EventHub(),
            card_requests=CardRequests() if config.terminal.profile == "pharmacy" else None,
        )
        self._settle_torn_debits()
        self.uplinks = self._uplinks(queue)
        for worker in self.uplinks:
            worker.start()
        feedback.start()
        for reader in self.readers:
            pipeline = TapPipeline(self.services, reader.name, config.readers.pcsc.transmit_timeout)
            loop = ReaderLoop(reader, pipeline)
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
        """Finish the tap in progress on every reader, stop the uplinks, close the queue."""
        self.notifier.stopping()
        for loop in self.loops:
            loop.stop(timeout=15.0)
        if self.api is not None:
            self.api.stop()
        for worker in self.uplinks:
            worker.stop()
        if self.services is not None:
            self.services.feedback.stop()
            if self.services.psam is not None:
                self.services.psam.close()
            self.services.journal.close()
            self.services.queue.close()
        for reader in self.readers:
            reader.close()
        log.info("daemon_stopped")

    def run_until_stopped(self) -> None:
        """Supervise in the calling (main) thread until SIGTERM or SIGINT."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        interval = watchdog_interval()
        tick = min(1.0, interval / 2) if interval else 1.0
        while not self.stopping.wait(tick):
            self.supervise()
        self.stop()

    def supervise(self) -> None:
        """One round of the main loop: reload if asked, settle stale tears, feed the watchdog."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()
        self._settle_torn_debits()
        if self.healthy():
            self.notifier.watchdog()
        else:
            log.error("daemon_unhealthy", dead=self.dead_workers())
        self.notifier.status(self.status_line())

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        """SIGHUP: a fresh hotlist from disk and the rules of a re-read configuration."""
        services = self._services()
        self.notifier.reloading()
        path = self.config.hotlist.path
        if path.exists():
            try:
                services.hotlist.install(path.read_bytes(), services.hotlist.etag)
            except HotlistFormatError as error:
                log.error("reload_hotlist_refused", error=str(error))
        if self.config_path is not None:
            try:
                fresh = load_config(self.config_path)
            except ConfigError as error:
                log.error("reload_config_refused", error=str(error))
            else:
                if (fresh.terminal, fresh.readers, fresh.queue) != (
                    self.config.terminal,
                    self.config.readers,
                    self.config.queue,
                ):
                    log.warning("reload_needs_restart", sections="terminal, readers or queue changed")
                else:
                    self.config = fresh
                    services.config = fresh
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
        }

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

    def _settle_torn_debits(self) -> None:
        bus = self.config.bus
        window = dt.timedelta(seconds=bus.tearing_window_seconds if bus else 0)
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
        return [worker for worker in (uplink, hotlist) if worker is not None]

    def _display(self) -> LineDisplay | None:
        settings = self.config.readers.serial.display
        if settings is None:
            return None
        return LineDisplay(settings)

    def _relay(self) -> GateRelay | None:
        settings = self.config.readers.serial.relay
        if settings is None:
            return None
        return GateRelay(settings)
