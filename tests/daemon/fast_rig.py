"""A bus terminal's money path in this process: real queue, journal, PSAM and card, no pcscd.

The parts are the daemon's own (`Services` as `reader.daemon.app` builds it: a `TapQueue`
and its `Journal` in a temporary folder, a `HotlistStore` with no list, a `SamSlot`, a
`Feedback` with no devices, an `EventHub`); only the readers differ: the in-process slot
(`sscard_sim.inprocess`) carries the virtual PSAM and the virtual card, with the same
removal and timeout semantics as pcscd's. A tap costs milliseconds, so the money path can be
judged per mutant (`make mutation`), where the vpcd bench takes 5 to 15 s.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.tunion import TRANSACTION_RECORD_LAYOUT, TransactionRecord
from reader.backends.base import CardSide, ReaderKind
from reader.backends.sam import SamSlot
from reader.config import read_secret
from reader.daemon.events import EventHub
from reader.daemon.feedback import Feedback, Signal
from reader.daemon.journal import Journal
from reader.daemon.pipeline import TapPipeline
from reader.daemon.services import Services
from reader.uplink.hotlist import HotlistStore
from reader.uplink.queue import TapQueue
from sscard_sim.card import VirtualCard
from sscard_sim.inprocess import InProcessChannel, InProcessReader
from sscard_sim.psam import VirtualPsam
from tests.daemon.bench import TAP_DAY, ManualClock, TracedCard, terminal_config

READER = "contactless"
FEEDBACK_WAIT_S = 5.0


@dataclass(frozen=True)
class Purse:
    """The T-Union purse as the virtual card's own memory holds it (own money, ATC, its log)."""

    balance: int
    atc: int
    transactions: tuple[TransactionRecord, ...]
    tac: bytes | None
    """The TAC of the card's last committed debit (what GET TRANSACTION PROOF would give)."""

    @classmethod
    def of(cls, card: VirtualCard) -> Purse:
        memory = card.memory
        return cls(
            balance=memory.balance,
            atc=memory.offline_atc,
            transactions=tuple(TRANSACTION_RECORD_LAYOUT.parse(raw) for raw in memory.transactions),
            tac=memory.last_proof.tac if memory.last_proof else None,
        )


@dataclass
class Signals:
    """What the feedback worker showed, in order (it runs on its own thread)."""

    shown: list[Signal] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def echo(self, signal: Signal) -> None:
        with self._cond:
            self.shown.append(signal)
            self._cond.notify_all()

    def wait(self, count: int) -> list[Signal]:
        """The first `count` signals, waiting for them; fewer if they do not come."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.shown) >= count, FEEDBACK_WAIT_S)
            return list(self.shown)


class Rig:
    """One bus terminal: `Services`, one reader's `TapPipeline`, the PSAM in its slot."""

    def __init__(self, workdir: Path, *, psam: CardSide | None = None, queue: dict[str, Any] | None = None) -> None:
        self.config = terminal_config("bus", workdir, queue=queue)
        self.clock = ManualClock(TAP_DAY)
        self.psam_chip = TracedCard(psam if psam is not None else VirtualPsam.from_profile("demo-psam"))
        self.psam_reader = InProcessReader("sam", ReaderKind.SAM)
        self.psam_reader.insert(self.psam_chip)
        self.card_reader = InProcessReader(READER)
        self.signals = Signals()
        self.feedback = Feedback(echo=self.signals.echo)
        self.feedback.start()
        queue_ = TapQueue(self.config.queue)
        token_key = read_secret(self.config.terminal.token_key)
        self.services = Services(
            config=self.config,
            token_key=token_key,
            queue=queue_,
            hotlist=HotlistStore(self.config.hotlist.path),
            journal=Journal(queue_, token_key),
            psam=SamSlot(self.psam_reader),
            feedback=self.feedback,
            events=EventHub(),
            card_requests=None,
            clock=self.clock,
        )
        self.published: list[Mapping[str, Any]] = []
        self.services.events.observe(self.published.append)
        self.pipeline = TapPipeline(self.services, READER)

    def close(self) -> None:
        self.feedback.stop()
        if self.services.psam is not None:
            self.services.psam.close()
        self.card_reader.close()
        self.services.queue.close()

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def present(self, card: CardSide) -> InProcessChannel:
        """The card put on the reader (again, if it was there: a fresh power-up)."""
        self.card_reader.insert(card)
        channel = self.card_reader.wait_for_card(0.0, threading.Event())
        assert channel is not None
        return channel

    def tap(self, card: CardSide) -> str:
        """One tap through the pipeline, as the driver loop makes it; returns its tap id."""
        tap_id = self.services.tap_ids.next()
        self.pipeline(self.present(card), tap_id)
        return tap_id

    def records(self) -> list[dict[str, Any]]:
        """Every record in the queue file, in queue order."""
        return [queued.record() for queued in self.services.queue.iter_taps()]

    def advance(self, seconds: float) -> dt.datetime:
        return self.clock.advance(seconds)
