"""One tap, start to end: read, decide, act, record, feedback.

`TapPipeline` is the processing callback of a reader's driver loop. Each terminal kind
reads only what its rules need, then the pure policy decides. The order of the last steps
is the point of this module:

1. before any money moves, the queue must be able to record the tap (else: out of service);
2. the debit is journalled before DEBIT FOR PURCHASE is sent;
3. the tap record is committed to the queue;
4. only then does the person hear "accepted", and the journal entry is cleared.

A card pulled away during the debit leaves its journal entry; when the same card comes back
within the tearing window, GET TRANSACTION PROOF settles it (debited: its record is written
with the original tap id; not debited: the ride is charged now). Entries whose card never
returned are recorded as unconfirmed by `settle_expired`, so no committed debit goes unrecorded.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from protocols.errors import ProtocolError
from protocols.exchange import Transmit, command, exchange
from protocols.fci import parse_fci
from protocols.purchase import (
    CappUpdate,
    NotDebited,
    PurchaseFailure,
    PurchaseRequest,
    PurchaseResult,
    Recovery,
    Step,
    purchase,
    recover,
)
from protocols.ssse_auth import SsseAuthenticationFailed
from protocols.ssse_items import read_items
from protocols.status import (
    ApplicationBlocked,
    ApplicationLocked,
    CardStatusError,
    FileNotFound,
    raise_for_status,
)
from protocols.tunion import (
    PROCESS_RECORD_LAYOUT,
    SFI_PROCESS,
    ProcessRecord,
    PublicInfo,
    read_record_sfi,
    select_tunion,
)
from protocols.tunion_read import public_info, read_balance
from reader.backends.base import CardChannel, CardRemoved, ReaderError, TransmitTimeout
from reader.backends.sam import SamSlot
from reader.config import Config
from reader.daemon.events import CardRequests, EventHub
from reader.daemon.feedback import Feedback, signal_for
from reader.daemon.journal import Journal, PendingDebit
from reader.daemon.policy import (
    AgeBand,
    BusRules,
    BusTap,
    Decision,
    Fare,
    HolderRules,
    HolderTap,
    Outcome,
    Reason,
    Ride,
    decide_bus,
    decide_holder,
)
from reader.daemon.record import Debit, TapIdGenerator, card_token, tap_record
from reader.log import get_logger
from reader.uplink.errors import OutOfServiceError
from reader.uplink.hotlist import HotlistStore
from reader.uplink.queue import TapQueue

TRANSPORT_ERRORS: tuple[type[Exception], ...] = (CardRemoved, TransmitTimeout)
READ_ERRORS: tuple[type[Exception], ...] = (CardStatusError, ProtocolError)
INDUSTRY_BUS = 0x02
TRANSACTION_SINGLE_RIDE = 0x06

log = get_logger(component="pipeline")


@dataclass(frozen=True)
class TapOutcome:
    """What a terminal kind's handler found; the pipeline records and signals it."""

    decision: Decision
    token: str | None = None
    region: str | None = None
    debit: Debit | None = None
    balance: int | None = None
    holder: Mapping[str, Any] | None = None
    record_tap_id: str | None = None
    record_time: dt.datetime | None = None
    pending: bool = False
    """A torn debit: journalled, not recorded yet (the card may come back)."""
    serial: str | None = None
    """The e-purse whose journalled debit this record settles."""
    paid_at: dt.datetime | None = None
    """When the card paid its ride (passback starts there), written with the record's settlement."""


@dataclass
class Services:
    """What every reader's pipeline shares."""

    config: Config
    token_key: bytes
    queue: TapQueue
    hotlist: HotlistStore
    journal: Journal
    psam: SamSlot | None
    feedback: Feedback
    events: EventHub
    card_requests: CardRequests | None
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
        return lambda apdu: slot.transmit(apdu)

    def token(self, card_number: str) -> str:
        return card_token(self.token_key, card_number)

    def hotlisted(self, token: str) -> bool:
        return self.hotlist.is_listed(bytes.fromhex(token))


def _denied(reason: Reason, **fields: Any) -> TapOutcome:
    return TapOutcome(Decision(Outcome.DENIED, reason), **fields)


class TapPipeline:
    """The processing callback for one contactless reader."""

    def __init__(self, services: Services, reader: str, transmit_timeout: float = 2.0) -> None:
        self.services = services
        self.reader = reader
        self.transmit_timeout = transmit_timeout
        profile = services.config.terminal.profile
        self._handle: Callable[[Transmit, str, dt.datetime], TapOutcome] = {
            "bus": self._bus,
            "library": self._library,
            "pharmacy": self._pharmacy,
        }[profile]

    def __call__(self, channel: CardChannel) -> None:
        services = self.services
        bound = structlog.contextvars.get_contextvars().get("tap_id")
        tap_id = bound or services.tap_ids.next()
        now = services.now()
        structlog.contextvars.bind_contextvars(tap_id=tap_id)
        try:
            try:
                services.queue.check_accepting()
            except OutOfServiceError as error:
                log.error("tap_refused_out_of_service", reason=error.reason)
                services.feedback.give(signal_for(Decision(Outcome.DENIED, Reason.OUT_OF_SERVICE)))
                return

            def card(apdu: bytes) -> bytes:
                return channel.transmit(apdu, self.transmit_timeout)

            try:
                outcome = self._handle(card, tap_id, now)
            except TRANSPORT_ERRORS as error:
                log.info("tap_card_lost", error=str(error))
                outcome = _denied(Reason.CARD_REMOVED)
            except READ_ERRORS as error:
                log.warning("tap_card_unreadable", error=str(error))
                outcome = _denied(Reason.CARD_READ_FAILED)
            except ReaderError as error:
                psam = services.psam.name if services.psam is not None else None
                log.error("tap_reader_failed", failed=error.reader, error=str(error))
                outcome = _denied(Reason.PSAM_UNAVAILABLE if error.reader == psam else Reason.CARD_READ_FAILED)
            log.info(
                "tap_decided",
                result=outcome.decision.outcome.value,
                reason=outcome.decision.reason.value,
                fare=outcome.decision.fare.amount if outcome.decision.fare else None,
                pending=outcome.pending,
            )
            self._finish(outcome, tap_id, now)
        finally:
            if not bound:
                structlog.contextvars.unbind_contextvars("tap_id")

    # ------------------------------------------------------------------ record and signal

    def _finish(self, outcome: TapOutcome, tap_id: str, now: dt.datetime) -> None:
        services = self.services
        decision = outcome.decision
        if outcome.pending:
            log.warning("tap_debit_torn", reason=decision.reason.value)
            services.feedback.give(signal_for(decision))
            return
        record = self._record(outcome, tap_id, now)
        try:
            services.queue.enqueue(record)
        except OutOfServiceError as error:
            log.error("tap_not_recorded", reason=error.reason, result=decision.outcome.value)
            services.feedback.give(signal_for(Decision(Outcome.DENIED, Reason.OUT_OF_SERVICE)))
            return
        if outcome.serial is not None or outcome.paid_at is not None:
            paid = (outcome.token, outcome.paid_at) if outcome.token and outcome.paid_at else None
            services.journal.recorded(outcome.serial, paid, self._passback_keep())
        log.info(
            "tap_recorded",
            result=decision.outcome.value,
            reason=decision.reason.value,
            fare=record["fare"],
            recorded_tap_id=record["tap_id"],
        )
        services.events.publish(record)
        balance_after = outcome.debit.balance_after if outcome.debit else None
        services.feedback.give(signal_for(decision, balance_after))
        if services.card_requests is not None:
            answer = {"tap_id": record["tap_id"], "result": record["result"], "reason": record["reason"]}
            services.card_requests.offer({**answer, **(outcome.holder or {})})

    def _record(self, outcome: TapOutcome, tap_id: str, now: dt.datetime) -> dict[str, Any]:
        return tap_record(
            tap_id=outcome.record_tap_id or tap_id,
            terminal_id=self.services.config.terminal.id,
            profile=self.services.config.terminal.profile,
            reader=self.reader,
            when=outcome.record_time or now,
            decision=outcome.decision,
            token=outcome.token,
            region=outcome.region,
            hotlist_version=self.services.hotlist.version,
            debit=outcome.debit,
            balance=outcome.balance,
        )

    # ------------------------------------------------------------------ library and pharmacy

    def _holder(self, card: Transmit, now: dt.datetime, ef06: tuple[int, ...]) -> tuple[TapOutcome, dict[str, Any]]:
        services = self.services
        try:
            items = read_items(card, services.psam_transmit(), (0x01, 0x05, 0x06, 0x07), ef06, authenticate=True)
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD), {}
        except SsseAuthenticationFailed as error:
            log.warning("tap_card_not_genuine", step=error.step.value)
            return _denied(Reason.CARD_NOT_GENUINE), {}
        values = items.values
        card_id = values.get("card_identification_code")
        number = items.text("card_number")
        if not isinstance(card_id, bytes) or number is None:
            return _denied(Reason.CARD_READ_FAILED), {}
        region = card_id[:3].hex().upper()
        token = services.token(number)
        log.info("tap_card_read", region=region, authenticated=items.authenticated)
        settings = services.config.library or services.config.pharmacy
        assert settings is not None
        tap = HolderTap(
            region=region,
            hotlisted=services.hotlisted(token),
            issued=_date(values.get("issue_date")),
            expiry=_date(values.get("expiry_date")),
        )
        decision = decide_holder(tap, HolderRules(tuple(settings.accepted_regions)), now)
        return TapOutcome(decision, token=token, region=region), values

    def _library(self, card: Transmit, tap_id: str, now: dt.datetime) -> TapOutcome:
        outcome, _ = self._holder(card, now, ())
        return outcome

    def _pharmacy(self, card: Transmit, tap_id: str, now: dt.datetime) -> TapOutcome:
        outcome, values = self._holder(card, now, (0x08, 0x09, 0x4E))
        if not outcome.decision.accepted:
            return outcome
        name = (values.get("name") or "") + (values.get("name_extension") or "")
        holder = {
            "tap_id": tap_id,
            "card_token": outcome.token,
            "region": outcome.region,
            "social_security_number": values.get("social_security_number"),
            "name": name or None,
        }
        return TapOutcome(outcome.decision, token=outcome.token, region=outcome.region, holder=holder)

    # ------------------------------------------------------------------ bus

    def _bus(self, card: Transmit, tap_id: str, now: dt.datetime) -> TapOutcome:
        services = self.services
        rules_config = services.config.bus
        assert rules_config is not None
        response = exchange(card, select_tunion())
        public: PublicInfo | None = None
        app_problem: Reason | None = None
        if response.sw == 0x6A82:
            app_problem = Reason.NO_TRANSPORT_APP
        else:
            try:
                raise_for_status(response.sw, "SELECT T-Union")
                public = public_info(card, parse_fci(response.data, "T-Union FCI"))
            except ApplicationLocked:
                app_problem = Reason.APP_LOCKED
            except ApplicationBlocked:
                app_problem = Reason.APP_BLOCKED

        # The purse's own money, and the overdraft allowance (GET BALANCE P1 00 counts it in).
        own = allowance = 0
        if public is not None:
            own = read_balance(card, include_overdraft=False)
            allowance = max(0, read_balance(card) - own)

        # A torn debit is settled first, while the PSAM may still hold its purchase session.
        pending = services.journal.pending(public.application_serial) if public else None
        recovered: PurchaseResult | NotDebited | PurchaseFailure | None = None
        if pending is not None and public is not None:
            recovered = self._recover(card, pending, public)
        ef06 = (0x0D,) if rules_config.bands and app_problem is None else ()
        try:
            items = read_items(card, services.psam_transmit(), (0x01, 0x07), ef06)
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD)
        except SsseAuthenticationFailed as error:
            log.warning("tap_card_not_genuine", step=error.step.value)
            return _denied(Reason.CARD_NOT_GENUINE)
        card_id = items.values.get("card_identification_code")
        number = items.text("card_number")
        if not isinstance(card_id, bytes) or number is None:
            return _denied(Reason.CARD_READ_FAILED)
        region = card_id[:3].hex().upper()
        token = services.token(number)
        log.info(
            "tap_card_read",
            region=region,
            authenticated=items.authenticated,
            transport=app_problem.value if app_problem else "ok",
            torn_debit_pending=pending is not None,
        )
        if app_problem is not None or public is None:
            return _denied(app_problem or Reason.CARD_READ_FAILED, token=token, region=region)
        if pending is not None and recovered is not None:
            settled = self._settled(recovered, pending, token, region, allowance)
            if settled is not None:
                return settled

        # The SSSE read left the SSSE selected: back to the e-purse for its log and the debit.
        command(card, select_tunion(), "SELECT T-Union")
        rides = self._recent_rides(card) if rules_config.transfer_discount else ()
        local = now.replace(tzinfo=None)
        tap = BusTap(
            region=region,
            hotlisted=services.hotlisted(token),
            start=public.start_date,
            expiry=public.expiry_date,
            balance=own,
            overdraft_limit=allowance,
            birth_date=_date(items.values.get("birth_date")),
            rides=rides,
            last_paid=_local(services.journal.last_paid(token), now),
        )
        decision = decide_bus(tap, self._rules(), local)
        fields: dict[str, Any] = {"token": token, "region": region, "balance": own}
        if not decision.accepted or decision.fare is None:
            return TapOutcome(decision, **fields)
        if decision.fare.amount == 0:
            return TapOutcome(decision, paid_at=now, **fields)
        return self._charge(card, tap_id, now, public, decision, fields, allowance)

    def _rules(self) -> BusRules:
        bus = self.services.config.bus
        assert bus is not None
        return BusRules(
            line=_line_code(bus.line),
            fare=bus.fare,
            accepted_regions=tuple(bus.accepted_regions),
            passback=dt.timedelta(seconds=bus.passback_seconds),
            transfer_discount=bus.transfer_discount,
            transfer_window=dt.timedelta(minutes=bus.transfer_window_minutes),
            bands=tuple(AgeBand(b.name, b.min_age, b.percent) for b in bus.bands),
        )

    def _passback_keep(self) -> dt.timedelta:
        bus = self.services.config.bus
        return dt.timedelta(seconds=bus.passback_seconds if bus else 0)

    def _recent_rides(self, card: Transmit, count: int = 3) -> tuple[Ride, ...]:
        """The newest process records (record 1 is the newest of the cyclic file)."""
        rides: list[Ride] = []
        for number in range(1, count + 1):
            response = exchange(card, read_record_sfi(SFI_PROCESS, number, PROCESS_RECORD_LAYOUT.size))
            if response.sw in (0x6A83, 0x6A82):
                break
            raise_for_status(response.sw, f"READ RECORD 1E {number}")
            record = PROCESS_RECORD_LAYOUT.parse(response.data)
            if record.time is not None and record.industry == INDUSTRY_BUS:
                rides.append(Ride(record.time, record.line_station[:2].hex(), record.amount))
        return tuple(rides)

    def _process_record(self, amount: int, balance_after: int, now: dt.datetime, public: PublicInfo) -> bytes:
        bus = self.services.config.bus
        assert bus is not None
        terminal = self.services.config.terminal.id.encode()[-8:].rjust(8, b"\0")
        return PROCESS_RECORD_LAYOUT.build(
            ProcessRecord(
                transaction_type=TRANSACTION_SINGLE_RIDE,
                terminal_id=terminal,
                industry=INDUSTRY_BUS,
                line_station=bytes.fromhex(_line_code(bus.line)) + bytes(5),
                amount=amount,
                balance_after=balance_after,
                time=now.replace(tzinfo=None),
                city_code=public.issuer_id[2:4],
                acquirer=public.issuer_id,
                reserved=bytes(6),
            )
        )

    def _charge(
        self,
        card: Transmit,
        tap_id: str,
        now: dt.datetime,
        public: PublicInfo,
        decision: Decision,
        fields: dict[str, Any],
        allowance: int,
    ) -> TapOutcome:
        services = self.services
        psam = services.psam_transmit()
        bus = services.config.bus
        assert decision.fare is not None and bus is not None
        if psam is None:
            log.error("tap_no_psam")
            return TapOutcome(Decision(Outcome.DENIED, Reason.PURCHASE_FAILED, decision.fare), **fields)
        amount = decision.fare.amount
        record_1e = self._process_record(amount, fields["balance"] - amount, now, public)
        request = PurchaseRequest(
            amount=amount,
            time=now.replace(tzinfo=None),
            key_index=bus.psam_key_index,
            updates=(CappUpdate(SFI_PROCESS, 0x00, record_1e),),
        )
        result = purchase(
            card,
            psam,
            request,
            public=public,
            transport_errors=TRANSPORT_ERRORS,
            before_debit=lambda recovery: services.journal.begin_debit(
                PendingDebit(tap_id, recovery, now, fields["token"], fields["region"], allowance)
            ),
        )
        if isinstance(result, PurchaseFailure):
            log.warning("tap_purchase_failed", step=result.step.value, error=str(result.cause))
            if result.may_be_debited:
                return TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED, decision.fare), pending=True)
            services.journal.end_debit(public.application_serial)
            reason = Reason.CARD_REMOVED if isinstance(result.cause, TRANSPORT_ERRORS) else Reason.PURCHASE_FAILED
            return TapOutcome(Decision(Outcome.DENIED, reason, decision.fare), **fields)
        return self._debited(
            result, decision, fields, public.application_serial, recovered=False, allowance=allowance
        )

    def _debited(
        self,
        result: PurchaseResult,
        decision: Decision,
        fields: dict[str, Any],
        serial: str,
        *,
        recovered: bool,
        allowance: int,
        tap_id: str | None = None,
        when: dt.datetime | None = None,
    ) -> TapOutcome:
        """The record of a debit; the card counts its overdraft allowance in, the record does not."""
        debit = Debit(
            balance_before=result.balance_before - allowance,
            balance_after=result.balance_after - allowance,
            atc=result.offline_atc,
            tac=result.tac.hex().upper(),
            psam_sequence=result.terminal_sequence,
            mac2_verified=result.mac2_verified,
            recovered=recovered,
        )
        unverified = not result.mac2_verified and not recovered
        if unverified and not isinstance(result.mac2_error, TRANSPORT_ERRORS):
            log.error("tap_mac2_invalid", error=str(result.mac2_error))
            decision = Decision(Outcome.DENIED, Reason.MAC2_INVALID, decision.fare)
        else:
            if unverified:
                # The PSAM did not answer (pulled, timed out): the card has debited and its TAC
                # stands, checked at clearing like every debit. Refusing the ride now would
                # send the person to tap again and pay twice.
                log.warning("tap_mac2_unverified", error=str(result.mac2_error))
        paid_at = when or self.services.now() if decision.accepted else None
        return TapOutcome(
            decision,
            token=fields.get("token"),
            region=fields.get("region"),
            debit=debit,
            record_tap_id=tap_id,
            record_time=when,
            serial=serial,
            paid_at=paid_at,
        )

    def _recover(
        self, card: Transmit, pending: PendingDebit, public: PublicInfo
    ) -> PurchaseResult | NotDebited | PurchaseFailure:
        """Ask the card that came back for the proof of its torn debit."""
        psam = self.services.psam_transmit()
        if psam is None:
            return PurchaseFailure(Step.PSAM_SELECT, RuntimeError("no PSAM configured"), pending.recovery)
        return recover(
            card, psam, pending.recovery, public=public, select_psam=False, transport_errors=TRANSPORT_ERRORS
        )

    def _settled(
        self,
        result: PurchaseResult | NotDebited | PurchaseFailure,
        pending: PendingDebit,
        token: str,
        region: str,
        allowance: int,
    ) -> TapOutcome | None:
        """The outcome of a returning torn card: its debit's record, or None to charge afresh.

        A recovered debit is recorded under the torn tap's id and time. Its MAC2 may no
        longer verify (the PSAM lost the purchase session to other taps meanwhile): the
        card's proof and TAC still stand, so the record says `mac2_verified: false` and the
        back office checks the TAC at clearing, as it does for every debit.
        """
        services = self.services
        recovery = pending.recovery
        if isinstance(result, PurchaseFailure):
            log.warning("tap_recovery_failed", step=result.step.value, error=str(result.cause))
            return TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED), pending=True)
        if isinstance(result, NotDebited):
            log.info("tap_torn_debit_not_committed", torn_tap_id=pending.tap_id)
            services.journal.end_debit(recovery.application_serial)
            self._record_torn_attempt(pending, token, region)
            return None
        log.info("tap_torn_debit_recovered", torn_tap_id=pending.tap_id, mac2_verified=result.mac2_verified)
        return self._debited(
            result,
            _fare_decision(recovery),
            {"token": token, "region": region},
            recovery.application_serial,
            recovered=True,
            allowance=allowance,
            tap_id=pending.tap_id,
            when=pending.created_at.astimezone(services.tz),
        )

    def _record_torn_attempt(self, pending: PendingDebit, token: str, region: str) -> None:
        """The torn tap never debited: it is recorded as a denied attempt under its own id."""
        outcome = TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED), token=token, region=region)
        record = self._record(outcome, pending.tap_id, pending.created_at.astimezone(self.services.tz))
        self.services.queue.enqueue(record)
        self.services.events.publish(record)


def settle_expired(services: Services, window: dt.timedelta, reader: str) -> int:
    """Record torn debits whose card did not come back within `window` as unconfirmed.

    A queue that refuses the record (full, disk full) leaves the entry in the journal for the
    next round: the debit must not be forgotten, and the daemon must not die of it either.
    """
    now = services.now()
    settled = 0
    for pending in services.journal.all_pending():
        if now - pending.created_at < window:
            continue
        recovery = pending.recovery
        record = tap_record(
            tap_id=pending.tap_id,
            terminal_id=services.config.terminal.id,
            profile=services.config.terminal.profile,
            reader=reader,
            when=pending.created_at.astimezone(services.tz),
            decision=Decision(Outcome.UNCONFIRMED, Reason.DEBIT_UNCONFIRMED, _fare_decision(recovery).fare),
            token=pending.token,
            region=pending.region,
            hotlist_version=services.hotlist.version,
            balance=recovery.balance_before - pending.allowance,
            extra={
                "atc": recovery.offline_atc,
                "psam_sequence": recovery.terminal_sequence,
                "application_serial_masked": _mask_serial(recovery.application_serial),
            },
        )
        try:
            services.queue.enqueue(record)
        except OutOfServiceError as error:
            log.error("tap_torn_debit_not_recorded", torn_tap_id=pending.tap_id, reason=error.reason)
            break
        services.journal.end_debit(recovery.application_serial)
        services.events.publish(record)
        log.warning("tap_torn_debit_unconfirmed", torn_tap_id=pending.tap_id)
        settled += 1
    return settled


def _line_code(line: str) -> str:
    """The line as the 0x1E record stores it (2 bytes BCD), and as rides read back from it compare."""
    return line.zfill(4)[-4:]


def _fare_decision(recovery: Recovery) -> Decision:
    return Decision(Outcome.ACCEPTED, Reason.OK, Fare(recovery.amount, recovery.amount, False, None))


def _mask_serial(serial: str) -> str:
    return "*" * (len(serial) - 4) + serial[-4:]


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None


def _local(when: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    return None if when is None else when.astimezone(now.tzinfo).replace(tzinfo=None)
