"""What every reader's tap pipeline and every terminal kind share: queue, journal, PSAM, clock."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.exchange import Transmit
from reader.backends.sam import SamSlot
from reader.config import Config
from reader.daemon.events import CardRequests, EventHub
from reader.daemon.feedback import Feedback
from reader.daemon.journal import Journal
from reader.daemon.record import TapIdGenerator, card_token
from reader.uplink.hotlist import HotlistStore
from reader.uplink.parameters import ParameterStore
from reader.uplink.queue import TapQueue


@dataclass
class Services:
    """The daemon's shared parts, built once and handed to every reader's pipeline."""

    config: Config
    token_key: bytes
    queue: TapQueue
    hotlist: HotlistStore
    journal: Journal
    psam: SamSlot | None
    feedback: Feedback
    events: EventHub
    card_requests: CardRequests | None
    parameters: ParameterStore | None = None
    """The back office's operator parameters in force, where the terminal takes them."""
    tap_ids: TapIdGenerator = field(default_factory=TapIdGenerator)
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    @property
    def tz(self) -> dt.tzinfo:
        return zoneinfo.ZoneInfo(self.config.terminal.timezone)

    def now(self) -> dt.datetime:
        """The local time of the terminal, with its UTC offset."""
        return self.clock().astimezone(self.tz)

    def psam_transmit(self) -> Transmit | None:
        slot = self.psam
        if slot is None:
            return None
        return slot.transmit

    def token(self, card_number: str) -> str:
        return card_token(self.token_key, card_number)

    def hotlisted(self, token: str) -> bool:
        return self.hotlist.is_listed(bytes.fromhex(token))

    @property
    def passback_keep(self) -> dt.timedelta:
        """How long the journal keeps what it remembers of a card: the bus's passback window,
        the canteen's repeat window (a card refused as not genuine stays refused that long)."""
        config = self.config
        if config.bus is not None:
            return dt.timedelta(seconds=config.bus.passback_seconds)
        if config.canteen is not None:
            return dt.timedelta(seconds=config.canteen.repeat_seconds)
        return dt.timedelta(0)
