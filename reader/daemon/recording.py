"""A tap's record, and its commit to the durable queue together with the journal's settlement.

The pipeline records every tap through here, and the money path records a torn tap's
attempt through here too, so a record is built and committed one way only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from reader.daemon.journal import Settlement
from reader.daemon.outcome import TapOutcome
from reader.daemon.record import tap_record
from reader.daemon.services import Services
from reader.log import get_logger
from reader.uplink.errors import DuplicateTapError

log = get_logger(component="pipeline")


class Recorder:
    """Builds and commits the records of one reader's taps."""

    def __init__(self, services: Services, reader: str) -> None:
        self.services = services
        self.reader = reader

    def record(
        self, outcome: TapOutcome, tap_id: str, now: dt.datetime, parameters_version: int | None = None
    ) -> dict[str, Any]:
        """The record of `outcome`; a recovered debit keeps its own tap's id and time.

        `parameters_version` is the version of the back office's parameters that decided it.
        """
        purse = outcome.purse
        if purse is not None and purse.original is not None:
            tap_id, now = purse.original
        return tap_record(
            tap_id=tap_id,
            terminal_id=self.services.config.terminal.id,
            profile=self.services.config.terminal.profile,
            reader=self.reader,
            when=now,
            decision=outcome.decision,
            token=outcome.card.token if outcome.card else None,
            region=outcome.card.region if outcome.card else None,
            hotlist_version=self.services.hotlist.version,
            debit=purse.debit if purse else None,
            balance=purse.balance if purse else None,
            parameters_version=parameters_version,
        )

    def commit(self, record: dict[str, Any], outcome: TapOutcome) -> None:
        """Queue the record and settle the journal in one commit; a record already queued is settled.

        Raises `OutOfServiceError` when the queue cannot take the record (full, disk full):
        then nothing is committed, the journal entry included.
        """
        journal = self.services.journal
        purse = outcome.purse
        serial = purse.settles if purse else None
        mark = None
        if outcome.card is not None and purse is not None and purse.mark is not None:
            mark = (outcome.card.token, *purse.mark)
        settlement = Settlement(serial, mark, self.services.passback_keep)
        needs = serial is not None or mark is not None
        try:
            self.services.queue.enqueue(record, also=journal.settle(settlement) if needs else None)
        except DuplicateTapError:
            # Only a record committed without its settlement (a journal of an earlier version)
            # gets here: the debit is recorded already, so the settlement is all that is left,
            # the card's mark with it (a card that just paid must not be charged again).
            log.warning("tap_already_recorded", recorded_tap_id=record["tap_id"])
            if needs:
                journal.apply(settlement)
