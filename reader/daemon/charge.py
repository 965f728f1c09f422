"""The e-purse debit with every guarantee, for any terminal kind that charges a card.

1. the debit is journalled before DEBIT FOR PURCHASE is sent;
2. from the journal entry until the card's answer to DEBIT is understood, any failure at
   all (the card pulled away, a timeout, a garbled answer, an unexpected status word, a bug
   of ours) leaves the tap torn: never recorded as denied, since the card may have paid;
3. only a refusal that proves the card did not debit (`protocols.status.DEBIT_REFUSALS`)
   closes it as not debited; a card refusing MAC1 (9302) is not genuine, and is refused at
   once for the passback window;
4. when the same card comes back, GET TRANSACTION PROOF settles the torn debit (debited: its
   record is written with the original tap id; not debited: the tap charges afresh) as soon
   as the e-purse is read, before anything is charged. The PSAM may still hold the purchase
   session then and verify MAC2, unless the kind has just used it to authenticate the card
   (a holder's band not kept, as after a restart): the TAC stands, MAC2 stays unverified;
5. entries whose card never returned are recorded as unconfirmed by `settle_expired`, so no
   committed debit goes unrecorded. Settlement is idempotent: a record already queued under
   the tap id means the debit is settled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from protocols.errors import ProtocolError, TransportError
from protocols.exchange import Transmit
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
from protocols.status import CardStatusError, InsufficientBalance, MacInvalid
from protocols.tunion import PublicInfo
from protocols.tunion_read import read_balance
from reader.daemon.crashpoints import CrashPoint, crash_point, crash_points_armed
from reader.daemon.journal import CardMark, PendingDebit
from reader.daemon.outcome import CardRef, PurseOutcome, TapContext, TapOutcome
from reader.daemon.policy import Decision, Fare, Outcome, Reason
from reader.daemon.record import Debit, tap_record
from reader.daemon.recording import Recorder
from reader.daemon.services import Services
from reader.log import get_logger
from reader.uplink.errors import DuplicateTapError, OutOfServiceError

INS_DEBIT = 0x54
INS_VERIFY_MAC2 = 0x72

log = get_logger(component="pipeline")

ProcessRecord = Callable[[int, bytes], CappUpdate]
"""The journey-log record of the charge, built once the balance after and the PSAM's number are known."""


@dataclass(frozen=True)
class CardSeen:
    """What a charging tap knows of the card once it is read: who, and its purse."""

    card: CardRef | None
    """None only for a torn debit journalled without the card's token (an earlier journal)."""
    balance: int | None = None
    """The purse's own money when the kind read it before deciding (GET BALANCE P1 03); None
    when the purchase is left to learn it: INITIALIZE answers the balance and the allowance."""

    def outcome(
        self,
        decision: Decision,
        *,
        settles: str | None = None,
        mark: tuple[CardMark, dt.datetime] | None = None,
    ) -> TapOutcome:
        """The outcome of a tap that did not debit: the record keeps what the purse holds."""
        return TapOutcome(decision, self.card, PurseOutcome(balance=self.balance, settles=settles, mark=mark))


def torn(decision: Decision) -> TapOutcome:
    """A tap whose debit may have happened: it waits for the card, or for `settle_expired`."""
    return TapOutcome(decision, torn=True)


class Charger:
    """Debits and settles e-purses for one reader's taps."""

    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.services = services
        self.recorder = recorder

    # ------------------------------------------------------------------ torn debits

    def settle_torn(self, card: Transmit, public: PublicInfo, tap: TapContext) -> TapOutcome | None:
        """The record of this card's torn debit if it has one that it paid; None to go on with the tap."""
        services = self.services
        pending = services.journal.pending(public.application_serial)
        if pending is None:
            return None
        tap.in_flight = True  # until the torn debit is settled, nothing may be recorded as denied
        ref = CardRef(pending.token, pending.region) if pending.token and pending.region else None
        seen = CardSeen(ref)
        psam = services.psam_transmit()
        result: PurchaseResult | NotDebited | PurchaseFailure
        if psam is None:
            result = PurchaseFailure(Step.PSAM_SELECT, RuntimeError("no PSAM configured"), pending.recovery)
        else:
            result = recover(card, psam, pending.recovery, public=public, select_psam=False)
        if isinstance(result, PurchaseFailure):
            log.warning("tap_recovery_failed", step=result.step.value, error=str(result.cause))
            return torn(Decision(Outcome.DENIED, Reason.CARD_REMOVED))
        if isinstance(result, NotDebited):
            log.info("tap_torn_debit_not_committed", torn_tap_id=pending.tap_id)
            self._record_torn_attempt(pending, seen)
            tap.in_flight = False  # it never debited: recorded as an attempt, and this tap charges afresh
            return None
        log.info("tap_torn_debit_recovered", torn_tap_id=pending.tap_id, mac2_verified=result.mac2_verified)
        when = pending.created_at.astimezone(services.tz)
        decision = _fare_decision(pending.recovery)
        return self._debited(result, decision, seen, when, pending.allowance, original=pending.tap_id)

    def _record_torn_attempt(self, pending: PendingDebit, seen: CardSeen) -> None:
        """The torn tap never debited: it is recorded as a denied attempt under its own id."""
        outcome = TapOutcome(
            Decision(Outcome.DENIED, Reason.CARD_REMOVED),
            seen.card,
            PurseOutcome(settles=pending.recovery.application_serial),
        )
        record = self.recorder.record(outcome, pending.tap_id, pending.created_at.astimezone(self.services.tz))
        self.recorder.commit(record, outcome)
        self.services.events.publish(record)

    # ------------------------------------------------------------------ the charge

    def charge(
        self,
        card: Transmit,
        tap: TapContext,
        public: PublicInfo,
        decision: Decision,
        seen: CardSeen,
        process_record: ProcessRecord | None,
        *,
        key_index: int,
    ) -> TapOutcome:
        """Debit `decision.fare` from the purse of `public` with PSAM key `key_index`, journalled before DEBIT."""
        services = self.services
        fare = decision.fare
        if fare is None:
            raise ValueError("a charge needs a fare")
        psam = services.psam_transmit()
        if psam is None:
            log.error("tap_no_psam")
            return seen.outcome(Decision(Outcome.DENIED, Reason.PURCHASE_FAILED, fare))
        request = PurchaseRequest(
            amount=fare.amount,
            time=tap.now.replace(tzinfo=None),
            key_index=key_index,
            process_record=process_record,
            known_terminal=self._known_terminal,
        )

        def journal(recovery: Recovery) -> None:
            token, region = (seen.card.token, seen.card.region) if seen.card else (None, None)
            pending = PendingDebit(tap.tap_id, recovery, tap.now, token, region, recovery.overdraft_limit)
            services.journal.begin_debit(pending)
            tap.in_flight = True
            crash_point(CrashPoint.JOURNAL_WRITTEN)

        result = purchase(
            crash_after(card, INS_DEBIT, CrashPoint.DEBIT_ANSWERED),
            crash_after(psam, INS_VERIFY_MAC2, CrashPoint.MAC2_VERIFIED),
            request,
            public=public,
            before_debit=journal,
        )
        if isinstance(result, Declined):
            return self._declined(result, fare, seen, tap.now)
        if isinstance(result, PurchaseFailure):
            return self._failed(card, result, fare, seen)
        return self._debited(result, decision, seen, tap.now, result.overdraft_limit)

    def _known_terminal(self) -> bytes | None:
        """The terminal number the SAM channel read when it opened (None: the purchase reads it).

        Asked once the purchase has selected the PSAM, so a PSAM swapped since the last
        purchase has had its channel reopened, and its own number read, by then.
        """
        slot = self.services.psam
        return slot.terminal_number if slot is not None else None

    def _failed(self, card: Transmit, result: PurchaseFailure, fare: Fare, seen: CardSeen) -> TapOutcome:
        """A purchase that stopped: torn once journalled; before that, refused with its reason."""
        log.warning("tap_purchase_failed", step=result.step.value, error=str(result.cause))
        if result.may_be_debited:
            return torn(Decision(Outcome.DENIED, Reason.CARD_REMOVED, fare))
        if isinstance(result.cause, InsufficientBalance):
            # INITIALIZE's 9401: the purse cannot pay, the allowance included. The rider is
            # shown what it holds, read now if the kind did not read it before deciding.
            balance = seen.balance if seen.balance is not None else own_balance(card)
            return CardSeen(seen.card, balance).outcome(Decision(Outcome.DENIED, Reason.INSUFFICIENT_BALANCE, fare))
        reason = Reason.CARD_REMOVED if isinstance(result.cause, TransportError) else Reason.PURCHASE_FAILED
        return seen.outcome(Decision(Outcome.DENIED, reason, fare))

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
        recovery = result.recovery
        own = CardSeen(seen.card, recovery.balance_before - recovery.overdraft_limit)
        return own.outcome(Decision(Outcome.DENIED, reason, fare), settles=recovery.application_serial, mark=mark)

    def _debited(
        self,
        result: PurchaseResult,
        decision: Decision,
        seen: CardSeen,
        when: dt.datetime,
        allowance: int,
        *,
        original: str | None = None,
    ) -> TapOutcome:
        """The record of a debit; the card counts its overdraft `allowance` in, the record keeps it apart.

        `original` is the tap id of a torn debit recovered now: recorded under it, at `when`.
        """
        recovered = original is not None
        debit = Debit(
            balance_before=result.balance_before - allowance,
            balance_after=result.balance_after - allowance,
            atc=result.offline_atc,
            tac=result.tac.hex().upper(),
            psam_sequence=result.terminal_sequence,
            mac2_verified=result.mac2_verified,
            recovered=recovered,
            overdraft_allowance=allowance,
        )
        mark = (CardMark.PAID, when)
        if result.mac2_rejected and not recovered:
            # The card's answer to DEBIT does not verify under the PSAM's session key: not a
            # genuine card (or a relay). The record keeps the fare and the TAC for the back
            # office; the card is refused at once within the passback window, never charged again.
            log.error("tap_mac2_invalid", error=str(result.mac2_error))
            decision = Decision(Outcome.DENIED, Reason.MAC2_INVALID, decision.fare)
            mark = (CardMark.NOT_GENUINE, when)
        elif not result.mac2_verified:
            # The PSAM did not answer, answered garbage, or (for a recovered debit) lost the
            # purchase session to other taps meanwhile: the card has debited and its TAC
            # stands, checked at clearing like every debit. Refusing the ride now would send
            # the person to tap again and pay twice.
            log.warning("tap_mac2_unverified", error=str(result.mac2_error), recovered=recovered)
        purse = PurseOutcome(
            debit=debit,
            settles=result.application_serial,
            mark=mark,
            original=(original, when) if original is not None else None,
        )
        return TapOutcome(decision, seen.card, purse)


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
            record_type="grey",
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


def own_balance(card: Transmit) -> int | None:
    """The purse's own money for the rider's display (GET BALANCE P1 03, the e-purse selected);
    None when the card does not say: a display line is not worth refusing the tap for."""
    try:
        return read_balance(card, include_overdraft=False)
    except (CardStatusError, ProtocolError, TransportError) as error:
        log.warning("tap_balance_unread", error=str(error))
        return None


def crash_after(transmit: Transmit, ins: int, point: CrashPoint) -> Transmit:
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


def _fare_decision(recovery: Recovery) -> Decision:
    return Decision(Outcome.ACCEPTED, Reason.OK, Fare(recovery.amount, recovery.amount, False, None))
