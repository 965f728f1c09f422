"""The T-Union purchase as one conversation over the card's and the PSAM's transmit.

    card  INITIALIZE FOR (CAPP) PURCHASE  -> balance, offline ATC, overdraft limit, key version,
                                             random; 9401 when the purse cannot pay
    PSAM  80 70 (MAC1 input, 36 bytes)    -> terminal sequence, MAC1
    card  UPDATE CAPP DATA CACHE (0x1A, 0x1E records; CAPP purchases only)
    card  DEBIT FOR (CAPP) PURCHASE       -> TAC, MAC2
    PSAM  80 72 (MAC2)                    -> 9000 when MAC2 verifies

`purchase` returns a `PurchaseResult`, a `PurchaseFailure` naming the step where it
stopped, or a `Declined` when the card's answer to DEBIT proves it did not debit.

One rule holds from the moment `before_debit` has journalled the debit until the card's
answer to DEBIT is understood: whatever goes wrong (the card pulled away, a timeout, a
truncated or malformed answer, an unexpected status word, a bug), the result is a failure
that carries a `Recovery`, because the card may have committed the debit without the answer
reaching the terminal (tearing). Only a refusal in `DEBIT_REFUSALS` closes it as not
debited. When the same card comes back, `recover` asks it for GET TRANSACTION PROOF: 9406
means the debit never happened.

A lost link (`protocols.errors.TransportError`: the card removed, a timeout) is reported as
a failure of the step in progress, like a refusal or a malformed answer; anything else
raised before the journal (a bug) propagates, since no money has moved.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from protocols.errors import ProtocolError, TransportError
from protocols.exchange import Transmit, command
from protocols.status import DEBIT_REFUSALS, CardStatusError, MacInvalid, MacTacUnavailable
from protocols.tunion import (
    DEBIT_ANSWER_LAYOUT,
    INIT_PURCHASE_ANSWER_LAYOUT,
    MAC1_ANSWER_LAYOUT,
    TERMINAL_NUMBER_LAYOUT,
    TRANSACTION_CAPP_PURCHASE,
    TRANSACTION_PROOF_ANSWER_LAYOUT,
    TRANSACTION_PURCHASE,
    DebitRequest,
    InitPurchaseRequest,
    Mac1Input,
    PublicInfo,
    debit_for_purchase,
    get_transaction_proof,
    initialize_for_purchase,
    psam_init_for_purchase,
    psam_read_terminal_number,
    psam_select_purchase_app,
    psam_verify_mac2,
    update_capp_data_cache,
)
from protocols.tunion_read import public_info, select


class Step(enum.Enum):
    """Steps of a purchase and of its recovery, in order."""

    SELECT = "select"
    PSAM_SELECT = "psam select"
    PSAM_TERMINAL_NUMBER = "psam terminal number"
    INITIALIZE = "initialize for purchase"
    MAC1 = "psam mac1"
    UPDATE_CAPP = "update capp data cache"
    DEBIT = "debit for purchase"
    VERIFY_MAC2 = "psam verify mac2"
    SAME_CARD = "same card"
    TRANSACTION_PROOF = "get transaction proof"


@dataclass(frozen=True)
class CappUpdate:
    """One UPDATE CAPP DATA CACHE: `record_id` in P1 (00 appends to a cyclic file)."""

    sfi: int
    record_id: int
    data: bytes


@dataclass(frozen=True)
class PurchaseRequest:
    """What the terminal wants to charge and how."""

    amount: int
    time: dt.datetime
    capp: bool = True
    key_index: int = 0x01
    updates: Sequence[CappUpdate] = ()
    process_record: Callable[[int, bytes], CappUpdate] | None = None
    """Built once INITIALIZE has answered, from the card's balance after this debit (the card's
    own arithmetic: its balance counts the overdraft allowance in, so it is never negative)
    and the PSAM's terminal number; sent after `updates`. This is how a terminal writes the
    0x1E record of the ride."""
    terminal_id: bytes | None = None
    known_terminal: Callable[[], bytes | None] | None = None
    """The PSAM's terminal number if the caller knows it, asked once the PSAM is selected
    (a PSAM swapped meanwhile is found by then); None: it is read from the PSAM."""
    issuer_id: bytes | None = None
    """MAC1 issuer field; default the 8 bytes of file 0x15's issuer id."""
    select_psam: bool = True
    psam_purchase_df: bytes = bytes.fromhex("8011")

    @property
    def transaction_type(self) -> int:
        return TRANSACTION_CAPP_PURCHASE if self.capp else TRANSACTION_PURCHASE


@dataclass(frozen=True)
class Recovery:
    """What a torn debit leaves behind for GET TRANSACTION PROOF when the same card returns."""

    application_serial: str
    offline_atc: int
    transaction_type: int
    amount: int
    balance_before: int
    terminal_id: bytes
    terminal_sequence: int
    time: dt.datetime
    overdraft_limit: int = 0
    """The allowance INITIALIZE answered, counted into `balance_before`: own money is the difference."""

    @property
    def proof_atc(self) -> int:
        """The ATC of the torn transaction: the one INITIALIZE returned, plus one."""
        return (self.offline_atc + 1) & 0xFFFF


@dataclass(frozen=True)
class PurchaseResult:
    """A committed purchase (the card has debited)."""

    application_serial: str
    amount: int
    balance_before: int
    balance_after: int
    offline_atc: int
    terminal_id: bytes
    terminal_sequence: int
    time: dt.datetime
    tac: bytes
    mac2: bytes
    mac2_verified: bool
    mac2_error: Exception | None = None
    overdraft_limit: int = 0
    """The allowance the card counts into both balances (INITIALIZE's answer)."""

    @property
    def mac2_rejected(self) -> bool:
        """The PSAM answered that MAC2 is wrong (9302): the card's answer is not genuine.

        Apart from a PSAM that did not answer, or answered garbage: then the debit's TAC
        stands and is checked at clearing, like every debit's.
        """
        return isinstance(self.mac2_error, MacInvalid)


@dataclass(frozen=True)
class PurchaseFailure:
    """The purchase stopped at `step`; with `recovery` set the card may have debited."""

    step: Step
    cause: Exception
    recovery: Recovery | None = None

    @property
    def may_be_debited(self) -> bool:
        return self.recovery is not None


@dataclass(frozen=True)
class Declined:
    """The card refused DEBIT with an answer that proves it did not debit (`DEBIT_REFUSALS`)."""

    cause: CardStatusError
    recovery: Recovery


@dataclass(frozen=True)
class NotDebited:
    """GET TRANSACTION PROOF answered 9406: the torn debit was never committed; charge again."""

    recovery: Recovery


class DifferentCard(Exception):
    """Recovery met another card than the one whose debit was torn."""

    def __init__(self, expected: str, found: str) -> None:
        super().__init__("a different card was presented")
        self.expected = expected
        self.found = found


_STEP_ERRORS: tuple[type[Exception], ...] = (CardStatusError, ProtocolError, TransportError)


def purchase(
    card: Transmit,
    psam: Transmit,
    request: PurchaseRequest,
    *,
    public: PublicInfo | None = None,
    before_debit: Callable[[Recovery], None] | None = None,
) -> PurchaseResult | PurchaseFailure | Declined:
    """Charge `request.amount` fen. `public` (file 0x15) skips the SELECT when already read.

    `before_debit` is called with the recovery data just before DEBIT FOR PURCHASE, the
    point after which the card may hold a debit the terminal never heard of: a terminal
    journals it there, durably, so the debit can be settled whatever happens next. If it
    raises, DEBIT is not sent and the exception propagates (no money has moved).
    """
    step = Step.SELECT
    try:
        if public is None:
            public = public_info(card, select(card))
        step = Step.PSAM_SELECT
        if request.select_psam:
            command(psam, psam_select_purchase_app(request.psam_purchase_df), "PSAM SELECT purchase")
        step = Step.PSAM_TERMINAL_NUMBER
        terminal_id = request.terminal_id
        if terminal_id is None and request.known_terminal is not None:
            terminal_id = request.known_terminal()
        if terminal_id is None:
            terminal_id = read_terminal_number(psam)
        step = Step.INITIALIZE
        init_request = InitPurchaseRequest(request.key_index, request.amount, terminal_id)
        init = INIT_PURCHASE_ANSWER_LAYOUT.parse(
            command(card, initialize_for_purchase(init_request, request.capp), "INITIALIZE FOR PURCHASE")
        )
        step = Step.MAC1
        mac1_input = Mac1Input(
            card_random=init.card_random,
            offline_atc=init.offline_atc,
            amount=request.amount,
            transaction_type=request.transaction_type,
            time=request.time,
            key_version=init.key_version,
            algorithm_id=init.algorithm_id,
            card_serial=public.serial_bytes,
            issuer_id=request.issuer_id if request.issuer_id is not None else public.issuer_id,
        )
        mac1 = MAC1_ANSWER_LAYOUT.parse(command(psam, psam_init_for_purchase(mac1_input), "PSAM MAC1"))
        step = Step.UPDATE_CAPP
        if request.capp:
            updates = list(request.updates)
            if request.process_record is not None:
                updates.append(request.process_record(init.balance - request.amount, terminal_id))
            for update in updates:
                apdu = update_capp_data_cache(update.sfi, update.record_id, update.data)
                command(card, apdu, f"UPDATE CAPP DATA CACHE {update.sfi:02X}")
    except _STEP_ERRORS as exc:
        return PurchaseFailure(step, exc)
    recovery = Recovery(
        application_serial=public.application_serial,
        offline_atc=init.offline_atc,
        transaction_type=request.transaction_type,
        amount=request.amount,
        balance_before=init.balance,
        terminal_id=terminal_id,
        terminal_sequence=mac1.terminal_sequence,
        time=request.time,
        overdraft_limit=init.overdraft_limit,
    )
    if before_debit is not None:
        before_debit(recovery)
    try:
        debit_request = DebitRequest(mac1.terminal_sequence, request.time, mac1.mac1)
        debit = DEBIT_ANSWER_LAYOUT.parse(command(card, debit_for_purchase(debit_request), "DEBIT FOR PURCHASE"))
    except DEBIT_REFUSALS as refusal:
        return Declined(refusal, recovery)
    except Exception as exc:  # noqa: BLE001 - after the journal, any failure means "may be debited"
        return PurchaseFailure(Step.DEBIT, exc, recovery)
    return _finish(psam, recovery, debit.tac, debit.mac2)


def read_terminal_number(psam: Transmit) -> bytes:
    """The PSAM's terminal number (file 0x16 of its MF): a constant of the PSAM, read once at open."""
    raw = command(psam, psam_read_terminal_number(), "PSAM READ terminal number")
    return TERMINAL_NUMBER_LAYOUT.parse(raw).terminal_id


def _finish(psam: Transmit, recovery: Recovery, tac: bytes, mac2: bytes) -> PurchaseResult:
    """The card has debited: whatever the PSAM answers to MAC2, the result is a debit."""
    error: Exception | None = None
    try:
        command(psam, psam_verify_mac2(mac2), "PSAM VERIFY MAC2")
    except Exception as exc:  # noqa: BLE001 - the debit stands; the error is reported with it
        error = exc
    return PurchaseResult(
        application_serial=recovery.application_serial,
        amount=recovery.amount,
        balance_before=recovery.balance_before,
        balance_after=recovery.balance_before - recovery.amount,
        offline_atc=recovery.offline_atc,
        terminal_id=recovery.terminal_id,
        terminal_sequence=recovery.terminal_sequence,
        time=recovery.time,
        tac=tac,
        mac2=mac2,
        mac2_verified=error is None,
        mac2_error=error,
        overdraft_limit=recovery.overdraft_limit,
    )


def recover(
    card: Transmit,
    psam: Transmit,
    recovery: Recovery,
    *,
    public: PublicInfo | None = None,
    select_psam: bool = False,
    psam_purchase_df: bytes = bytes.fromhex("8011"),
) -> PurchaseResult | NotDebited | PurchaseFailure:
    """Settle a torn debit on the card that came back: proof of the debit, or proof it never was.

    The card must be the same (same application serial); another card yields a failure at
    `Step.SAME_CARD` and nothing is sent to it beyond reading its public file.
    """
    step = Step.SELECT
    try:
        if public is None:
            public = public_info(card, select(card))
        step = Step.SAME_CARD
        if public.application_serial != recovery.application_serial:
            raise DifferentCard(recovery.application_serial, public.application_serial)
        step = Step.TRANSACTION_PROOF
        try:
            raw = command(
                card,
                get_transaction_proof(recovery.proof_atc, recovery.transaction_type),
                "GET TRANSACTION PROOF",
            )
        except MacTacUnavailable:
            return NotDebited(recovery)
        proof = TRANSACTION_PROOF_ANSWER_LAYOUT.parse(raw)
        step = Step.PSAM_SELECT
        if select_psam:
            command(psam, psam_select_purchase_app(psam_purchase_df), "PSAM SELECT purchase")
    except Exception as exc:  # noqa: BLE001 - whatever fails leaves the torn debit pending, never settled
        return PurchaseFailure(step, exc, recovery)
    return _finish(psam, recovery, proof.tac, proof.mac2)
