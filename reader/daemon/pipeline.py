"""One tap, start to end: read, decide, act, record, feedback.

`TapPipeline` is the processing callback of a reader's driver loop. Each terminal kind
reads only what its rules need, then the pure policy decides. The order of the last steps
is the point of this module:

1. before any money moves, the queue must be able to record the tap (else: out of service);
2. the debit is journalled before DEBIT FOR PURCHASE is sent;
3. the tap record is committed to the queue, and the journal entry cleared, in one commit;
4. only then does the person hear "accepted".

From the moment the debit is journalled until the card's answer to DEBIT is understood, any
failure at all (the card pulled away, a timeout, a garbled answer, an unexpected status word,
a bug of ours) leaves the tap pending: never recorded as denied, since the card may have
paid. Only a refusal that proves the card did not debit (`protocols.status.DEBIT_REFUSALS`)
closes it as not debited; a card refusing MAC1 (9302) is not genuine, and is refused at once
for the passback window. When the same card comes back within the tearing window, GET
TRANSACTION PROOF settles it (debited: its record is written with the original tap id; not
debited: the ride is charged now). Entries whose card never returned are recorded as
unconfirmed by `settle_expired`, so no committed debit goes unrecorded. Settlement is
idempotent: a record already queued under the tap id means the debit is settled.
"""

from __future__ import annotations

import dataclasses
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
    Declined,
    NotDebited,
    PurchaseFailure,
    PurchaseRequest,
    PurchaseResult,
    Recovery,
    Step,
    purchase,
    recover,
)
from protocols.ssse_auth import PsamCannotAuthenticate, SsseAuthenticationFailed
from protocols.ssse_items import SsseItems, read_items
from protocols.status import (
    ApplicationBlocked,
    ApplicationLocked,
    CardStatusError,
    FileNotFound,
    InsufficientBalance,
    MacInvalid,
    raise_for_status,
)
from protocols.tunion import (
    PROCESS_RECORD_LAYOUT,
    SFI_PROCESS,
    PublicInfo,
    read_record_sfi,
    select_tunion,
)
from protocols.tunion_process import build_process_record
from protocols.tunion_read import public_info, read_balance
from reader.backends.base import CardChannel, CardRemoved, ReaderError, TransmitTimeout
from reader.backends.sam import SamSlot
from reader.config import BusSettings, Config, ConfigError
from reader.daemon.crashpoints import CrashPoint, crash_point, crash_points_armed
from reader.daemon.events import CardRequests, EventHub
from reader.daemon.feedback import Feedback, signal_for
from reader.daemon.journal import CardMark, Journal, PendingDebit, Settlement
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
from reader.uplink.errors import DuplicateTapError, OutOfServiceError
from reader.uplink.hotlist import HotlistStore
from reader.uplink.queue import TapQueue

TRANSPORT_ERRORS: tuple[type[Exception], ...] = (CardRemoved, TransmitTimeout)
READ_ERRORS: tuple[type[Exception], ...] = (CardStatusError, ProtocolError)
INDUSTRY_BUS = 0x02
TRANSACTION_SINGLE_RIDE = 0x06
INS_DEBIT = 0x54
INS_VERIFY_MAC2 = 0x72

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
    mark: tuple[CardMark, dt.datetime] | None = None
    """What to remember of the card for the passback window (paid, or not genuine), and when;
    written in the record's commit."""


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
        self._in_flight = False
        """Set once this tap's debit is journalled: from then on no failure may deny the tap."""
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

            self._in_flight = False
            try:
                outcome = self._handle(_crash_after(card, INS_DEBIT, CrashPoint.DEBIT_ANSWERED), tap_id, now)
            except Exception as error:  # noqa: BLE001 - after the journal, a failure of any kind is a torn debit
                outcome = self._failed(error)
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

    def _failed(self, error: Exception) -> TapOutcome:
        """The outcome of a tap whose conversation raised `error`.

        Once the debit is journalled the card may have paid, so the tap stays pending for
        recovery whatever the error; before that, no money has moved and the tap is denied.
        """
        if self._in_flight:
            log.error("tap_failed_after_journal", error_type=type(error).__name__, error=str(error))
            return TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED), pending=True)
        if isinstance(error, TRANSPORT_ERRORS):
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
            self._commit(record, outcome)
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
        balance_after = outcome.debit.balance_after if outcome.debit else None
        if balance_after is None and decision.accepted:
            balance_after = outcome.balance  # a free ride: what the purse still holds
        services.feedback.give(signal_for(decision, balance_after))
        if services.card_requests is not None:
            answer = {"tap_id": record["tap_id"], "result": record["result"], "reason": record["reason"]}
            services.card_requests.offer({**answer, **(outcome.holder or {})})

    def _commit(self, record: dict[str, Any], outcome: TapOutcome) -> None:
        """Queue the record and settle the journal in one commit; a record already queued is settled."""
        journal = self.services.journal
        mark = None
        if outcome.token is not None and outcome.mark is not None:
            mark = (outcome.token, *outcome.mark)
        settlement = Settlement(outcome.serial, mark, self._passback_keep())
        needs = outcome.serial is not None or mark is not None
        try:
            self.services.queue.enqueue(record, also=journal.settle(settlement) if needs else None)
        except DuplicateTapError:
            # Only a record committed without its settlement (a journal of an earlier version)
            # gets here: the debit is recorded already, so the settlement is all that is left.
            log.warning("tap_already_recorded", recorded_tap_id=record["tap_id"])
            if outcome.serial is not None:
                journal.clear(outcome.serial)

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
        except PsamCannotAuthenticate as error:
            # The terminal cannot prove the card genuine: refused, but the card is not blamed,
            # and the record still names it by the EF05 items read before authentication.
            log.warning(
                "tap_psam_cannot_authenticate", step=error.step.value, command=error.command, sw=f"{error.sw:04X}"
            )
            known_id = error.readable.get("card_identification_code")
            known_number = error.readable.get("card_number")
            if not isinstance(known_id, bytes) or not isinstance(known_number, str):
                return _denied(Reason.PSAM_CANNOT_AUTHENTICATE), {}
            identity = {"token": services.token(known_number), "region": known_id[:3].hex().upper()}
            return _denied(Reason.PSAM_CANNOT_AUTHENTICATE, **identity), {}
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
        card_id = values.get("card_identification_code")
        # What medical-insurance settlement identifies the card by, beside the holder's ID
        # number and name; handed to the POS that asked, never recorded or logged.
        holder = {
            "tap_id": tap_id,
            "card_token": outcome.token,
            "region": outcome.region,
            "card_identification_code": card_id.hex().upper() if isinstance(card_id, bytes) else None,
            "card_number": values.get("card_number"),
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
        # The card's identity for it comes from the journal: nothing else needs reading first.
        pending = services.journal.pending(public.application_serial) if public else None
        if pending is not None and public is not None:
            # Until the torn debit is settled, nothing of this tap may be recorded as denied.
            self._in_flight = True
            torn = CardSeen(pending.token, pending.region, own, pending.allowance)
            settled = self._settled(self._recover(card, pending, public), pending, torn)
            if settled is not None:
                return settled
            self._in_flight = False  # it never debited: recorded as an attempt, and this tap charges afresh
        ef06 = (0x0D,) if rules_config.bands and app_problem is None else ()

        refused: PsamCannotAuthenticate | None = None
        try:
            items = read_items(card, services.psam_transmit(), (0x01, 0x07), ef06)
        except FileNotFound:
            return _denied(Reason.NOT_A_SOCIAL_SECURITY_CARD)
        except PsamCannotAuthenticate as error:
            # EF06 stays closed, so no birth date and no age band; the card is not at fault.
            refused = error
            items = SsseItems(dict(error.readable), authenticated=False)
        except SsseAuthenticationFailed as error:
            log.warning("tap_card_not_genuine", step=error.step.value)
            return _denied(Reason.CARD_NOT_GENUINE)
        card_id = items.values.get("card_identification_code")
        number = items.text("card_number")
        if not isinstance(card_id, bytes) or number is None:
            return _denied(Reason.CARD_READ_FAILED)
        if refused is not None:
            unreadable = rules_config.on_birth_date_unreadable
            log.warning(
                "tap_psam_cannot_authenticate",
                step=refused.step.value,
                command=refused.command,
                sw=f"{refused.sw:04X}",
                on_birth_date_unreadable=unreadable,
            )
            if unreadable == "refuse":
                identity = {"token": services.token(number), "region": card_id[:3].hex().upper()}
                return _denied(Reason.PSAM_CANNOT_AUTHENTICATE, **identity)
        region = card_id[:3].hex().upper()
        token = services.token(number)
        log.info(
            "tap_card_read",
            region=region,
            authenticated=items.authenticated,
            transport=app_problem.value if app_problem else "ok",
            torn_debit_settled=pending is not None,
        )
        if app_problem is not None or public is None:
            return _denied(app_problem or Reason.CARD_READ_FAILED, token=token, region=region)

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
            last_paid=_local(services.journal.last(token, CardMark.PAID), now),
            last_refused=_local(services.journal.last(token, CardMark.NOT_GENUINE), now),
        )
        decision = decide_bus(tap, self._rules(), local)
        seen = CardSeen(token, region, own, allowance)
        if not decision.accepted or decision.fare is None:
            return seen.outcome(decision)
        if decision.fare.amount == 0:
            return dataclasses.replace(seen.outcome(decision), mark=(CardMark.PAID, now))
        return self._charge(card, tap_id, now, public, decision, seen)

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

    def _bus_settings(self) -> BusSettings:
        bus = self.services.config.bus
        if bus is None:
            raise ConfigError("a bus terminal needs a [bus] section")
        return bus

    def _process_record(self, public: PublicInfo, amount: int, now: dt.datetime) -> Callable[[int, bytes], CappUpdate]:
        """The ride's 0x1E record, built once the card's balance after and the PSAM's number are known."""
        bus = self._bus_settings()
        city = bytes.fromhex(bus.city_code) if bus.city_code else public.issuer_id[2:4]

        def build(balance_after: int, terminal_number: bytes) -> CappUpdate:
            record = build_process_record(
                transaction_type=TRANSACTION_SINGLE_RIDE,
                terminal_number=terminal_number,
                industry=INDUSTRY_BUS,
                line=bus.line,
                station=bus.station,
                operator_code=bus.operator_code,
                amount=amount,
                balance_after=balance_after,
                time=now.replace(tzinfo=None),
                city_code=city,
                acquirer=bytes.fromhex(bus.acquirer),
            )
            return CappUpdate(SFI_PROCESS, 0x00, record)

        return build

    def _charge(
        self, card: Transmit, tap_id: str, now: dt.datetime, public: PublicInfo, decision: Decision, seen: CardSeen
    ) -> TapOutcome:
        services = self.services
        fare = decision.fare
        assert fare is not None
        psam = services.psam_transmit()
        if psam is None:
            log.error("tap_no_psam")
            return seen.outcome(Decision(Outcome.DENIED, Reason.PURCHASE_FAILED, fare))
        request = PurchaseRequest(
            amount=fare.amount,
            time=now.replace(tzinfo=None),
            key_index=self._bus_settings().psam_key_index,
            process_record=self._process_record(public, fare.amount, now),
        )

        def journal(recovery: Recovery) -> None:
            services.journal.begin_debit(PendingDebit(tap_id, recovery, now, seen.token, seen.region, seen.allowance))
            self._in_flight = True
            crash_point(CrashPoint.JOURNAL_WRITTEN)

        result = purchase(
            card,
            _crash_after(psam, INS_VERIFY_MAC2, CrashPoint.MAC2_VERIFIED),
            request,
            public=public,
            transport_errors=TRANSPORT_ERRORS,
            before_debit=journal,
        )
        if isinstance(result, Declined):
            return self._declined(result, fare, seen, now)
        if isinstance(result, PurchaseFailure):
            log.warning("tap_purchase_failed", step=result.step.value, error=str(result.cause))
            if result.may_be_debited:
                return TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED, fare), pending=True)
            reason = Reason.CARD_REMOVED if isinstance(result.cause, TRANSPORT_ERRORS) else Reason.PURCHASE_FAILED
            return seen.outcome(Decision(Outcome.DENIED, reason, fare))
        return self._debited(result, decision, seen, recovered=False)

    def _declined(self, result: Declined, fare: Fare, seen: CardSeen, now: dt.datetime) -> TapOutcome:
        """The card refused DEBIT before touching its purse: a definite "not debited"."""
        refusal = result.cause
        log.warning("tap_debit_refused", sw=f"{refusal.sw:04X}", meaning=refusal.meaning)
        mark: tuple[CardMark, dt.datetime] | None = None
        if isinstance(refusal, MacInvalid):
            reason, mark = Reason.CARD_NOT_GENUINE, (CardMark.NOT_GENUINE, now)
        elif isinstance(refusal, InsufficientBalance):
            reason = Reason.INSUFFICIENT_BALANCE
        else:
            reason = Reason.PURCHASE_FAILED
        outcome = seen.outcome(Decision(Outcome.DENIED, reason, fare))
        return dataclasses.replace(outcome, serial=result.recovery.application_serial, mark=mark)

    def _debited(
        self,
        result: PurchaseResult,
        decision: Decision,
        seen: CardSeen,
        *,
        recovered: bool,
        tap_id: str | None = None,
        when: dt.datetime | None = None,
    ) -> TapOutcome:
        """The record of a debit; the card counts its overdraft allowance in, the record keeps it apart."""
        debit = Debit(
            balance_before=result.balance_before - seen.allowance,
            balance_after=result.balance_after - seen.allowance,
            atc=result.offline_atc,
            tac=result.tac.hex().upper(),
            psam_sequence=result.terminal_sequence,
            mac2_verified=result.mac2_verified,
            recovered=recovered,
            overdraft_allowance=seen.allowance,
        )
        mark: tuple[CardMark, dt.datetime] | None = None
        if result.mac2_rejected and not recovered:
            # The card's answer to DEBIT does not verify under the PSAM's session key: not a
            # genuine card (or a relay). The record keeps the fare and the TAC for the back
            # office; the card is refused at once within the passback window, never charged again.
            log.error("tap_mac2_invalid", error=str(result.mac2_error))
            decision = Decision(Outcome.DENIED, Reason.MAC2_INVALID, decision.fare)
            mark = (CardMark.NOT_GENUINE, when or self.services.now())
        elif not result.mac2_verified:
            # The PSAM did not answer, answered garbage, or (for a recovered debit) lost the
            # purchase session to other taps meanwhile: the card has debited and its TAC
            # stands, checked at clearing like every debit. Refusing the ride now would send
            # the person to tap again and pay twice.
            log.warning("tap_mac2_unverified", error=str(result.mac2_error), recovered=recovered)
        paid_at = when or self.services.now()
        return TapOutcome(
            decision,
            token=seen.token,
            region=seen.region,
            debit=debit,
            record_tap_id=tap_id,
            record_time=when,
            serial=result.application_serial,
            mark=(CardMark.PAID, paid_at) if decision.accepted else mark,
        )

    def _recover(
        self, card: Transmit, pending: PendingDebit, public: PublicInfo
    ) -> PurchaseResult | NotDebited | PurchaseFailure:
        """Ask the card that came back for the proof of its torn debit."""
        psam = self.services.psam_transmit()
        if psam is None:
            return PurchaseFailure(Step.PSAM_SELECT, RuntimeError("no PSAM configured"), pending.recovery)
        return recover(card, psam, pending.recovery, public=public, select_psam=False)

    def _settled(
        self, result: PurchaseResult | NotDebited | PurchaseFailure, pending: PendingDebit, seen: CardSeen
    ) -> TapOutcome | None:
        """The outcome of a returning torn card: its debit's record, or None to charge afresh.

        A recovered debit is recorded under the torn tap's id and time. Its MAC2 may no
        longer verify (the PSAM lost the purchase session to other taps meanwhile): the
        card's proof and TAC still stand, so the record says `mac2_verified: false` and the
        back office checks the TAC at clearing, as it does for every debit.
        """
        recovery = pending.recovery
        if isinstance(result, PurchaseFailure):
            log.warning("tap_recovery_failed", step=result.step.value, error=str(result.cause))
            return TapOutcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED), pending=True)
        if isinstance(result, NotDebited):
            log.info("tap_torn_debit_not_committed", torn_tap_id=pending.tap_id)
            self._record_torn_attempt(pending, seen)
            return None
        log.info("tap_torn_debit_recovered", torn_tap_id=pending.tap_id, mac2_verified=result.mac2_verified)
        return self._debited(
            result,
            _fare_decision(recovery),
            seen,
            recovered=True,
            tap_id=pending.tap_id,
            when=pending.created_at.astimezone(self.services.tz),
        )

    def _record_torn_attempt(self, pending: PendingDebit, seen: CardSeen) -> None:
        """The torn tap never debited: it is recorded as a denied attempt under its own id."""
        outcome = dataclasses.replace(
            seen.outcome(Decision(Outcome.DENIED, Reason.CARD_REMOVED)),
            balance=None,
            serial=pending.recovery.application_serial,
        )
        record = self._record(outcome, pending.tap_id, pending.created_at.astimezone(self.services.tz))
        self._commit(record, outcome)
        self.services.events.publish(record)


@dataclass(frozen=True)
class CardSeen:
    """What a bus tap knows of the card once it is read: who, where from, and its purse."""

    token: str | None
    region: str | None
    balance: int
    """The purse's own money (GET BALANCE P1 02); below zero while the card uses its overdraft."""
    allowance: int
    """The overdraft allowance the card counts into the balance it answers INITIALIZE with."""

    def outcome(self, decision: Decision) -> TapOutcome:
        return TapOutcome(decision, token=self.token, region=self.region, balance=self.balance)


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
                "overdraft_allowance": pending.allowance,
                "application_serial_masked": pending.serial_masked,
            },
        )
        try:
            services.queue.enqueue(record, also=services.journal.settle_tap(pending.tap_id))
        except DuplicateTapError:
            log.warning("tap_torn_debit_already_recorded", torn_tap_id=pending.tap_id)
            services.journal.clear(tap_id=pending.tap_id)
            continue
        except OutOfServiceError as error:
            log.error("tap_torn_debit_not_recorded", torn_tap_id=pending.tap_id, reason=error.reason)
            break
        services.events.publish(record)
        log.warning("tap_torn_debit_unconfirmed", torn_tap_id=pending.tap_id)
        settled += 1
    return settled


def _crash_after(transmit: Transmit, ins: int, point: CrashPoint) -> Transmit:
    """`transmit`, with the crash point `point` right after each answer to INS `ins`.

    Only a crash test arms crash points; otherwise `transmit` is returned as it is.
    """
    if not crash_points_armed():
        return transmit

    def wrapped(apdu: bytes) -> bytes:
        answer = transmit(apdu)
        if len(apdu) > 1 and apdu[1] == ins:
            crash_point(point)
        return answer

    return wrapped


def _line_code(line: str) -> str:
    """The line as the 0x1E record stores it (2 bytes BCD), and as rides read back from it compare."""
    return line.zfill(4)[-4:]


def _fare_decision(recovery: Recovery) -> Decision:
    return Decision(Outcome.ACCEPTED, Reason.OK, Fare(recovery.amount, recovery.amount, False, None))


def _date(value: object) -> dt.date | None:
    return value if isinstance(value, dt.date) else None


def _local(when: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    return None if when is None else when.astimezone(now.tzinfo).replace(tzinfo=None)
