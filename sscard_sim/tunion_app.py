"""The T-Union e-purse (JT/T 978) of the virtual card: files, purse, and the CAPP purchase.

Behaviour a terminal depends on, as a real card has it:
- INITIALIZE FOR (CAPP) PURCHASE opens a purchase held in volatile memory; UPDATE CAPP DATA
  CACHE only fills a cache; DEBIT FOR PURCHASE checks MAC1 and then applies everything (the
  balance, the offline ATC, the 0x18 record, the cached 0x1A and 0x1E records, the proof) in
  one commit of the card's memory. Power lost before the commit leaves the card as it was;
  power lost after it leaves the debit whole, with its proof.
- GET TRANSACTION PROOF answers MAC2 and TAC of the last committed debit when asked with its
  ATC (the ATC INITIALIZE returned, plus one) and its transaction type, 9406 otherwise.
- The offline ATC counts debits; INITIALIZE returns the count so far, the debit's 0x18 record
  and its proof carry the count after it (the reference's "ATC + 1" rule; inferred).
- Balance: the purse keeps the holder's own money, negative while the overdraft is in use.
  INITIALIZE and GET BALANCE P1 00 include the overdraft limit; P1 03 excludes it, P1 02
  gives the overdraft in use and P1 01 the limit (the sources' reading, cards.md §2.4).
- A permanently locked application answers SELECT with 9303 and refuses every command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.apdu import CommandApdu
from protocols.errors import ProtocolError
from protocols.fci import Fci
from protocols.tunion import (
    AID_TUNION_EP,
    BALANCE_LAYOUT,
    CAPP_DATA_LENGTH,
    CAPP_RECORD_LAYOUT,
    DEBIT_ANSWER_LAYOUT,
    DEBIT_REQUEST_LAYOUT,
    HOLDER_INFO_LAYOUT,
    INIT_PURCHASE_ANSWER_LAYOUT,
    INIT_PURCHASE_REQUEST_LAYOUT,
    MANAGEMENT_INFO_LAYOUT,
    PPSE_LABEL,
    PROCESS_RECORD_LAYOUT,
    PUBLIC_INFO_LAYOUT,
    SFI_CAPP,
    SFI_HOLDER,
    SFI_MANAGEMENT,
    SFI_PROCESS,
    SFI_PUBLIC,
    SFI_TRANSACTIONS,
    TRANSACTION_CAPP_PURCHASE,
    TRANSACTION_PROOF_ANSWER_LAYOUT,
    TRANSACTION_PROOF_REQUEST_LAYOUT,
    TRANSACTION_PURCHASE,
    TRANSACTION_RECORD_LAYOUT,
    Balance,
    CappRecord,
    DebitAnswer,
    InitPurchaseAnswer,
    TransactionProofAnswer,
    TransactionRecord,
)
from sscard_sim import crypto
from sscard_sim.cos import Refusal, TearHook, exact_le, no_tear, window
from sscard_sim.keys import CardPurchaseKey
from sscard_sim.profile import TUnionProfile
from sscard_sim.state import MemoryStore, TransactionProof

TRANSACTION_LOG_SIZE = 10
PROCESS_LOG_SIZE = 30
CAPP_RECORD_SIZE = CAPP_RECORD_LAYOUT.size
PROCESS_RECORD_SIZE = PROCESS_RECORD_LAYOUT.size
MAX_ATC = 0xFFFF


def blank_capp_record(record_id: int) -> bytes:
    """A 0x1A record as personalisation allocates it: its id, zeros, a valid CRC."""
    blank = CappRecord(
        record_id=0x2700 | record_id,
        record_length=CAPP_DATA_LENGTH,
        un_flag=0,
        locked=0,
        body=bytes(CAPP_RECORD_LAYOUT.span("body").size),
        crc32=0,
    )
    return CAPP_RECORD_LAYOUT.build(blank.sealed())


def capp_record_identifier(record: bytes) -> int:
    """The identifier UPDATE CAPP DATA CACHE names in P1: byte 1 of the record."""
    return record[1]


@dataclass
class PendingPurchase:
    """A purchase between INITIALIZE and DEBIT: volatile, gone with power or reselection."""

    transaction_type: int
    key: CardPurchaseKey
    amount: int
    terminal_id: bytes
    card_random: bytes
    offline_atc: int
    capp_updates: list[tuple[int, int, bytes]] = field(default_factory=list)


class TUnionApp:
    """The T-Union e-purse ADF (A0 00 00 06 32 01 01 05)."""

    name = "T-Union"

    def __init__(
        self,
        profile: TUnionProfile,
        store: MemoryStore,
        random: Callable[[int], bytes],
        verifies_terminal: bool = True,
        tear: TearHook = no_tear,
    ) -> None:
        self.profile = profile
        self.aid = AID_TUNION_EP
        self.store = store
        self.random = random
        self.verifies_terminal = verifies_terminal
        self.tear = tear
        self.pending: PendingPurchase | None = None
        self._files = {
            SFI_PUBLIC: PUBLIC_INFO_LAYOUT.build(profile.public),
            SFI_HOLDER: HOLDER_INFO_LAYOUT.build(profile.holder),
            SFI_MANAGEMENT: MANAGEMENT_INFO_LAYOUT.build(profile.management),
        }

    # --- selection ----------------------------------------------------------------------------

    def select(self) -> bytes:
        if self.store.memory.locked:
            raise Refusal(0x9303)
        fci = Fci.create(
            self.aid,
            label=PPSE_LABEL,
            app_version=self.profile.app_version,
            issuer_data=self._files[SFI_PUBLIC],
        )
        return fci.to_bytes()

    def deselect(self) -> None:
        self.pending = None

    # --- commands -----------------------------------------------------------------------------

    def handle(self, command: CommandApdu) -> bytes:
        if self.store.memory.locked:
            raise Refusal(0x9303)
        key = (command.cla, command.ins)
        if key == (0x00, 0xB0):
            return self._read_binary(command)
        if key == (0x00, 0xB2):
            return self._read_record(command)
        if key == (0x80, 0x5C):
            return self._get_balance(command)
        if key == (0x80, 0x50):
            return self._initialize(command)
        if key == (0x80, 0xDC):
            return self._update_capp_cache(command)
        if key == (0x80, 0x54):
            return self._debit(command)
        if key == (0x80, 0x5A):
            return self._transaction_proof(command)
        raise Refusal(0x6D00 if command.cla in (0x00, 0x80) else 0x6E00)

    def _read_binary(self, command: CommandApdu) -> bytes:
        if not command.p1 & 0x80:
            raise Refusal(0x6986)  # no current EF: these files are read by SFI
        content = self._files.get(command.p1 & 0x1F)
        if content is None:
            raise Refusal(0x6A82)
        return window(content, command.p2, command)

    def _records(self, sfi: int) -> tuple[bytes, ...]:
        memory = self.store.memory
        if sfi == SFI_TRANSACTIONS:
            return memory.transactions
        if sfi == SFI_PROCESS:
            return memory.process_log
        if sfi == SFI_CAPP:
            return memory.capp_records
        raise Refusal(0x6A82)

    def _read_record(self, command: CommandApdu) -> bytes:
        sfi = command.p2 >> 3
        if sfi == 0:
            raise Refusal(0x6986)
        records = self._records(sfi)
        mode = command.p2 & 0x07
        if mode == 0x04:
            if not 1 <= command.p1 <= len(records):
                raise Refusal(0x6A83)
            return exact_le(records[command.p1 - 1], command)
        if mode == 0x00 and sfi == SFI_CAPP:
            for record in records:
                if capp_record_identifier(record) == command.p1:
                    return exact_le(record, command)
            raise Refusal(0x6A83)
        raise Refusal(0x6A86)

    def _get_balance(self, command: CommandApdu) -> bytes:
        if command.p2 != 0x02:
            raise Refusal(0x6A86)
        own = self.store.memory.balance
        limit = self.profile.overdraft_limit
        values = {0x00: own + limit, 0x01: limit, 0x02: max(-own, 0), 0x03: max(own, 0)}
        if command.p1 not in values:
            raise Refusal(0x6A86)
        return exact_le(BALANCE_LAYOUT.build(Balance(values[command.p1])), command)

    def _initialize(self, command: CommandApdu) -> bytes:
        self.pending = None
        if command.p1 not in (0x01, 0x03) or command.p2 != 0x02:
            raise Refusal(0x6A86)
        try:
            request = INIT_PURCHASE_REQUEST_LAYOUT.parse(command.data)
        except ProtocolError:
            raise Refusal(0x6700) from None
        key = self.profile.purchase_keys.get(request.key_index)
        if key is None:
            raise Refusal(0x9403)
        memory = self.store.memory
        if memory.offline_atc >= MAX_ATC:
            raise Refusal(0x9402)
        available = memory.balance + self.profile.overdraft_limit
        if request.amount > available:
            raise Refusal(0x9401)
        card_random = self.random(4)
        self.pending = PendingPurchase(
            transaction_type=TRANSACTION_CAPP_PURCHASE if command.p1 == 0x03 else TRANSACTION_PURCHASE,
            key=key,
            amount=request.amount,
            terminal_id=request.terminal_id,
            card_random=card_random,
            offline_atc=memory.offline_atc,
        )
        answer = InitPurchaseAnswer(
            balance=available,
            offline_atc=memory.offline_atc,
            overdraft_limit=self.profile.overdraft_limit,
            key_version=key.version,
            algorithm_id=key.algorithm,
            card_random=card_random,
        )
        return INIT_PURCHASE_ANSWER_LAYOUT.build(answer)

    def _update_capp_cache(self, command: CommandApdu) -> bytes:
        pending = self.pending
        if pending is None or pending.transaction_type != TRANSACTION_CAPP_PURCHASE:
            raise Refusal(0x6985)
        sfi, mode = command.p2 >> 3, command.p2 & 0x07
        if mode != 0:
            raise Refusal(0x6A86)
        if sfi == SFI_CAPP:
            if len(command.data) != CAPP_RECORD_SIZE:
                raise Refusal(0x6700)
            if capp_record_identifier(command.data) != command.p1:
                raise Refusal(0x6A80)
            if not any(capp_record_identifier(r) == command.p1 for r in self.store.memory.capp_records):
                raise Refusal(0x6A83)
        elif sfi == SFI_PROCESS:
            if len(command.data) != PROCESS_RECORD_SIZE:
                raise Refusal(0x6700)
            if command.p1 != 0x00:
                raise Refusal(0x6A86)
        else:
            raise Refusal(0x6A82)
        pending.capp_updates.append((sfi, command.p1, command.data))
        return b""

    def _debit(self, command: CommandApdu) -> bytes:
        pending, self.pending = self.pending, None
        if pending is None:
            raise Refusal(0x6985)
        if command.p1 != 0x01 or command.p2 != 0x00:
            raise Refusal(0x6A86)
        try:
            request = DEBIT_REQUEST_LAYOUT.parse(command.data)
        except ProtocolError:
            raise Refusal(0x6700) from None
        time_span = DEBIT_REQUEST_LAYOUT.span("time")
        stamp = command.data[time_span.offset : time_span.offset + time_span.size]
        purchase = crypto.PurchaseData(
            amount=pending.amount,
            trans_type=pending.transaction_type,
            terminal_id=pending.terminal_id,
            date=stamp[:4],
            time=stamp[4:],
        )
        session_key = crypto.purchase_session_key(
            pending.key.dpk, pending.card_random, pending.offline_atc, request.terminal_sequence
        )
        if self.verifies_terminal and not crypto.macs_equal(crypto.mac1(session_key, purchase), request.mac1):
            raise Refusal(0x9302)
        mac2 = crypto.mac2(session_key, pending.amount)
        tac = crypto.tac(pending.key.dtk, purchase, request.terminal_sequence)
        memory = self.store.memory
        atc = pending.offline_atc + 1
        record = TransactionRecord(
            atc=atc,
            overdraft_limit=self.profile.overdraft_limit,
            amount=pending.amount,
            transaction_type=pending.transaction_type,
            terminal_id=pending.terminal_id,
            time=request.time,
        )
        capp_records = list(memory.capp_records)
        process_log = list(memory.process_log)
        for sfi, identifier, data in pending.capp_updates:
            if sfi == SFI_CAPP:
                capp_records = [data if capp_record_identifier(r) == identifier else r for r in capp_records]
            else:
                process_log.insert(0, data)
        self.tear("debit:before_commit")
        self.store.commit(
            memory.with_changes(
                balance=memory.balance - pending.amount,
                offline_atc=atc,
                transactions=(TRANSACTION_RECORD_LAYOUT.build(record), *memory.transactions)[
                    :TRANSACTION_LOG_SIZE
                ],
                process_log=tuple(process_log[:PROCESS_LOG_SIZE]),
                capp_records=tuple(capp_records),
                last_proof=TransactionProof(atc, pending.transaction_type, mac2, tac),
            )
        )
        self.tear("debit:after_commit")
        return DEBIT_ANSWER_LAYOUT.build(DebitAnswer(tac=tac, mac2=mac2))

    def _transaction_proof(self, command: CommandApdu) -> bytes:
        if command.p1 != 0x00 or command.p2 not in (TRANSACTION_PURCHASE, TRANSACTION_CAPP_PURCHASE):
            raise Refusal(0x6A86)
        try:
            request = TRANSACTION_PROOF_REQUEST_LAYOUT.parse(command.data)
        except ProtocolError:
            raise Refusal(0x6700) from None
        proof = self.store.memory.last_proof
        if proof is None or proof.atc != request.atc or proof.transaction_type != command.p2:
            raise Refusal(0x9406)
        return TRANSACTION_PROOF_ANSWER_LAYOUT.build(TransactionProofAnswer(mac2=proof.mac2, tac=proof.tac))
