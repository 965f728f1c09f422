"""One tap, start to end, the same for every terminal kind: check, process, record, signal.

`TapPipeline` is the processing callback of a reader's driver loop. The terminal kind
(`reader.daemon.kinds`) reads only what its rules need, decides with the pure policy and
acts; what every kind shares happens here, in this order:

1. before anything is sent to the card, the queue must be able to record the tap (else: out
   of service);
2. the kind processes the tap; a kind that charges journals the debit before DEBIT
   (`reader.daemon.charge`), and from then on any failure leaves the tap torn, never denied;
3. the tap record is committed to the queue, and the journal settled, in one commit;
4. only then does the person hear "accepted", and the event goes to the local API.
"""

from __future__ import annotations

import structlog

from protocols.errors import ProtocolError, TransportError
from protocols.status import CardStatusError
from reader.backends.base import CardChannel, ReaderError
from reader.daemon.charge import torn
from reader.daemon.crashpoints import CrashPoint, crash_point
from reader.daemon.feedback import signal_for
from reader.daemon.kinds import Kind, create_kind
from reader.daemon.outcome import TapContext, TapOutcome
from reader.daemon.policy import Decision, Outcome, Reason
from reader.daemon.recording import Recorder
from reader.daemon.services import Services
from reader.log import get_logger
from reader.uplink.errors import OutOfServiceError

READ_ERRORS: tuple[type[Exception], ...] = (CardStatusError, ProtocolError)

log = get_logger(component="pipeline")


class TapPipeline:
    """The processing callback for one contactless reader."""

    def __init__(self, services: Services, reader: str, transmit_timeout: float = 2.0) -> None:
        self.services = services
        self.reader = reader
        self.transmit_timeout = transmit_timeout
        self.recorder = Recorder(services, reader)
        self.kind: Kind = create_kind(services.config.terminal.profile, services, self.recorder)

    def __call__(self, channel: CardChannel, tap_id: str) -> None:
        # Every event of the tap names it and its reader, whoever drives the pipeline.
        with structlog.contextvars.bound_contextvars(tap_id=tap_id, reader=self.reader):
            self._process(channel, tap_id)

    def _process(self, channel: CardChannel, tap_id: str) -> None:
        services = self.services
        tap = TapContext(tap_id, services.now())
        try:
            services.queue.check_accepting()
        except OutOfServiceError as error:
            log.error("tap_refused_out_of_service", reason=error.reason)
            services.feedback.give(signal_for(Decision(Outcome.DENIED, Reason.OUT_OF_SERVICE)))
            return

        def card(apdu: bytes) -> bytes:
            return channel.transmit(apdu, self.transmit_timeout)

        try:
            outcome = self.kind.process(card, tap)
        except Exception as error:  # noqa: BLE001 - after the journal, a failure of any kind is a torn debit
            outcome = self._failed(error, tap)
        log.info(
            "tap_decided",
            result=outcome.decision.outcome.value,
            reason=outcome.decision.reason.value,
            fare=outcome.decision.fare.amount if outcome.decision.fare else None,
            pending=outcome.torn,
        )
        self._finish(outcome, tap)

    def _failed(self, error: Exception, tap: TapContext) -> TapOutcome:
        """The outcome of a tap whose conversation raised `error`.

        Once the debit is journalled the card may have paid, so the tap stays torn for
        recovery whatever the error; before that, no money has moved and the tap is denied.
        """
        if tap.in_flight:
            log.error("tap_failed_after_journal", error_type=type(error).__name__, error=str(error))
            return torn(Decision(Outcome.DENIED, Reason.CARD_REMOVED))
        if isinstance(error, TransportError):
            log.info("tap_card_lost", error=str(error))
            return _denied(Reason.CARD_REMOVED)
        if isinstance(error, READ_ERRORS):
            log.warning("tap_card_unreadable", error=str(error))
            return _denied(Reason.CARD_READ_FAILED)
        if isinstance(error, ReaderError):
            psam = self.services.psam.name if self.services.psam is not None else None
            log.error("tap_reader_failed", failed=error.reader, error=str(error))
            return _denied(Reason.PSAM_UNAVAILABLE if error.reader == psam else Reason.CARD_READ_FAILED)
        if isinstance(error, OutOfServiceError):
            log.error("tap_refused_out_of_service", reason=error.reason)
            return _denied(Reason.OUT_OF_SERVICE)
        raise error

    def _finish(self, outcome: TapOutcome, tap: TapContext) -> None:
        services = self.services
        decision = outcome.decision
        if outcome.torn:
            log.warning("tap_debit_torn", reason=decision.reason.value)
            services.feedback.give(signal_for(decision))
            return
        record = self.recorder.record(outcome, tap.tap_id, tap.now, tap.parameters_version)
        try:
            self.recorder.commit(record, outcome)
        except OutOfServiceError as error:
            log.error("tap_not_recorded", reason=error.reason, result=decision.outcome.value)
            services.feedback.give(signal_for(Decision(Outcome.DENIED, Reason.OUT_OF_SERVICE)))
            return
        crash_point(CrashPoint.RECORD_COMMITTED)
        log.info(
            "tap_recorded",
            result=decision.outcome.value,
            reason=decision.reason.value,
            fare=record["fare"],
            recorded_tap_id=record["tap_id"],
        )
        services.events.publish(record)
        crash_point(CrashPoint.JOURNAL_CLEARED)
        purse = outcome.purse
        balance_after = purse.debit.balance_after if purse and purse.debit else None
        if balance_after is None and decision.accepted and purse is not None:
            balance_after = purse.balance  # a free ride: what the purse still holds
        services.feedback.give(signal_for(decision, balance_after))
        if services.card_requests is not None:
            answer = {"tap_id": record["tap_id"], "result": record["result"], "reason": record["reason"]}
            services.card_requests.offer({**answer, **(outcome.answer or {})})


def _denied(reason: Reason) -> TapOutcome:
    return TapOutcome(Decision(Outcome.DENIED, reason))
