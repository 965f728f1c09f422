"""Card and PSAM semantics, in process: the rules a terminal meets, command by command.

These run the virtual card without a bridge (the in-process attachment) so that each rule is
checked in isolation; the same card through pcscd is covered by test_card_pcsc.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from protocols.apdu import CommandApdu
from protocols.ecash import read_ecash
from protocols.exchange import command, exchange
from protocols.fci import parse_fci
from protocols.ppse import read_ppse
from protocols.purchase import CappUpdate, PurchaseFailure, PurchaseRequest, PurchaseResult, purchase
from protocols.ssse import EF05, EF06, read_item, select_ef, select_ssse
from protocols.ssse_auth import authenticate
from protocols.status import InsufficientBalance
from protocols.tunion import (
    AID_TUNION_EP,
    CAPP_DATA_LENGTH,
    CAPP_RECORD_LAYOUT,
    PROCESS_RECORD_LAYOUT,
    SFI_CAPP,
    SFI_PROCESS,
    SFI_TRANSACTIONS,
    TRANSACTION_RECORD_LAYOUT,
    CappRecord,
    DebitRequest,
    InitPurchaseRequest,
    ProcessRecord,
    debit_for_purchase,
    get_balance,
    get_transaction_proof,
    initialize_for_purchase,
    read_record_sfi,
    select_tunion,
    update_capp_data_cache,
)
from protocols.tunion_read import read_tunion
from sscard_sim.card import VirtualCard
from sscard_sim.psam import VirtualPsam

WHEN = dt.datetime(2025, 6, 1, 8, 30, 0)


def powered(profile: str, state_path: Path | None = None) -> VirtualCard:
    card = VirtualCard.from_profile(profile, state_path=state_path)
    card.power_on()
    return card


@pytest.fixture
def psam() -> VirtualPsam:
    device = VirtualPsam.from_profile("demo-psam")
    device.power_on()
    return device


def send(card: VirtualCard | VirtualPsam, apdu: CommandApdu | str) -> tuple[bytes, int]:
    raw = bytes.fromhex(apdu) if isinstance(apdu, str) else apdu.to_bytes()
    answer = card.transmit(raw)
    return answer[:-2], int.from_bytes(answer[-2:], "big")


def capp_updates(marker: int) -> tuple[CappUpdate, ...]:
    body = bytes([marker]) * CAPP_RECORD_LAYOUT.span("body").size
    record = CappRecord(
        record_id=0x2701, record_length=CAPP_DATA_LENGTH, un_flag=0, locked=0, body=body, crc32=0
    ).sealed()
    process = ProcessRecord(
        transaction_type=0x03,
        terminal_id=bytes.fromhex("0000510100000001"),
        industry=0x01,
        line_station=bytes([marker]) * 7,
        amount=200,
        balance_after=0,
        time=WHEN,
        city_code=bytes.fromhex("5101"),
        acquirer=bytes.fromhex("02005101FFFFFFFF"),
        reserved=bytes(6),
    )
    return (
        CappUpdate(SFI_CAPP, 1, CAPP_RECORD_LAYOUT.build(record)),
        CappUpdate(SFI_PROCESS, 0, PROCESS_RECORD_LAYOUT.build(process)),
    )


# --- SSSE -----------------------------------------------------------------------------------------


def test_ssse_select_without_le_answers_61xx_and_get_response_gives_the_fci() -> None:
    card = powered("sichuan")
    data, sw = send(card, select_ssse())
    assert data == b""
    assert sw >> 8 == 0x61
    fci, sw2 = send(card, CommandApdu(0x00, 0xC0, 0x00, 0x00, le=sw & 0xFF))
    assert sw2 == 0x9000
    assert parse_fci(fci).issuer_data == bytes.fromhex("860103")
    direct, sw3 = send(card, select_ssse(with_le=True))
    assert (direct, sw3) == (fci, 0x9000)


def test_read_record_answers_6cxx_with_the_exact_length() -> None:
    card = powered("sichuan")
    command(card.transmit, select_ssse(), "SELECT SSSE")
    command(card.transmit, select_ef(EF05), "SELECT EF05")
    data, sw = send(card, CommandApdu(0x00, 0xB2, 0x03, 0x00, le=0x10))
    assert (data, sw) == (b"", 0x6C06)
    data, sw = send(card, CommandApdu(0x00, 0xB2, 0x03, 0x00, le=0x06))
    assert (data, sw) == (b"\x03\x04" + b"3.00", 0x9000)
    assert exchange(card.transmit, CommandApdu(0x00, 0xB2, 0x01, 0x2C, le=0x05)).data[:2] == b"\x01\x10"


def test_ef06_of_a_third_generation_card_opens_only_after_external_authentication(psam: VirtualPsam) -> None:
    card = powered("sichuan")
    command(card.transmit, select_ssse(), "SELECT SSSE")
    command(card.transmit, select_ef(EF06), "SELECT EF06")
    assert send(card, read_item(0x08))[1] == 0x6982
    card_id = command(card.transmit, read_item(0x01, sfi=5), "READ 01")[2:]
    authenticate(card.transmit, psam.transmit, card_id, 0x03)
    data, sw = send(card, read_item(0x08, sfi=6))
    assert (data[2:], sw) == (b"510104199001019996", 0x9000)
    command(card.transmit, select_ssse(with_le=True), "SELECT SSSE again")
    assert send(card, read_item(0x08, sfi=6))[1] == 0x6982  # leaving the DF loses the status
    card.power_off()
    card.power_on()
    command(card.transmit, select_ssse(with_le=True), "SELECT SSSE")
    assert send(card, read_item(0x08, sfi=6))[1] == 0x6982  # so does losing power


def test_second_generation_ef06_needs_no_authentication() -> None:
    card = powered("second-generation")
    command(card.transmit, select_ssse(), "SELECT SSSE")
    data, sw = send(card, read_item(0x09, sfi=6))
    assert sw == 0x9000
    assert data[2:].rstrip(b"\x00").decode("gbk") == "测试辛"


def test_record_numbers_drift_but_identifiers_do_not() -> None:
    with_extension, without = powered("second-generation"), powered("no-transport")
    for card in (with_extension, without):
        command(card.transmit, select_ssse(), "SELECT SSSE")
    with_extension.ssse.authenticated = without.ssse.authenticated = True
    assert command(with_extension.transmit, read_record_ef06(4), "record 4")[0] == 0x0A
    assert command(without.transmit, read_record_ef06(3), "record 3")[0] == 0x0A
    assert send(without, read_item(0x4E, sfi=6))[1] == 0x6A83
    for card in (with_extension, without):
        assert command(card.transmit, read_item(0x0A, sfi=6), "sex")[0] == 0x0A


def read_record_ef06(number: int) -> CommandApdu:
    return CommandApdu(0x00, 0xB2, number, (6 << 3) | 0x04, le=256)


def test_failed_external_authentications_count_down_and_block_the_key() -> None:
    card = powered("sichuan")
    command(card.transmit, select_ssse(), "SELECT SSSE")
    statuses = []
    for _ in range(6):
        command(card.transmit, CommandApdu(0x00, 0x84, 0x00, 0x00, le=16), "GET CHALLENGE")
        statuses.append(send(card, CommandApdu(0x00, 0x82, 0x00, 0x0A, bytes(16)))[1])
    assert statuses == [0x63C4, 0x63C3, 0x63C2, 0x63C1, 0x63C0, 0x6983]
    assert card.memory.external_auth_tries == 0
    assert send(card, CommandApdu(0x00, 0x82, 0x00, 0x0A, bytes(16)))[1] == 0x6983


def test_external_authentication_without_a_challenge_is_refused() -> None:
    card = powered("sichuan")
    command(card.transmit, select_ssse(), "SELECT SSSE")
    assert send(card, CommandApdu(0x00, 0x82, 0x00, 0x0A, bytes(16)))[1] == 0x6985
    assert card.memory.external_auth_tries == 5


def test_the_clone_fails_the_psams_internal_authentication_check(psam: VirtualPsam) -> None:
    from protocols.ssse_auth import AuthStep, SsseAuthenticationFailed

    card = powered("cloned")
    command(card.transmit, select_ssse(), "SELECT SSSE")
    card_id = command(card.transmit, read_item(0x01, sfi=5), "READ 01")[2:]
    with pytest.raises(SsseAuthenticationFailed) as failure:
        authenticate(card.transmit, psam.transmit, card_id, 0x03)
    assert failure.value.step is AuthStep.PSAM_VERIFY_CARD


# --- T-Union ---------------------------------------------------------------------------------------


def test_transaction_proof_is_9406_until_a_debit_commits(psam: VirtualPsam) -> None:
    card = powered("sichuan")
    command(card.transmit, select_tunion(), "SELECT")
    assert send(card, get_transaction_proof(18))[1] == 0x9406
    result = purchase(card.transmit, psam.transmit, PurchaseRequest(200, WHEN))
    assert isinstance(result, PurchaseResult) and result.mac2_verified
    proof, sw = send(card, get_transaction_proof(18))
    assert (proof, sw) == (result.mac2 + result.tac, 0x9000)
    assert send(card, get_transaction_proof(17))[1] == 0x9406
    assert send(card, get_transaction_proof(18, transaction_type=0x06))[1] == 0x9406


def test_debit_needs_an_initialize_and_a_good_mac1() -> None:
    card = powered("sichuan")
    command(card.transmit, select_tunion(), "SELECT")
    debit = debit_for_purchase(DebitRequest(1, WHEN, bytes(4)))
    assert send(card, debit)[1] == 0x6985
    init = InitPurchaseRequest(1, 200, bytes.fromhex("510100000001"))
    command(card.transmit, initialize_for_purchase(init), "INIT")
    assert send(card, debit)[1] == 0x9302
    assert send(card, debit)[1] == 0x6985  # the failed debit closed the purchase
    assert (card.memory.balance, card.memory.offline_atc) == (5000, 17)


def test_capp_cache_is_held_until_debit_and_lost_with_power(psam: VirtualPsam) -> None:
    card = powered("sichuan")
    blank = card.memory.capp_records[0]
    command(card.transmit, select_tunion(), "SELECT")
    assert send(card, update_capp_data_cache(SFI_CAPP, 1, capp_updates(0x11)[0].data))[1] == 0x6985
    init = InitPurchaseRequest(1, 200, bytes.fromhex("510100000001"))
    command(card.transmit, initialize_for_purchase(init), "INIT")
    for update in capp_updates(0x22):
        command(card.transmit, update_capp_data_cache(update.sfi, update.record_id, update.data), "UPDATE")
    assert card.memory.capp_records[0] == blank
    assert card.memory.process_log == ()
    card.power_off()
    card.power_on()
    assert card.memory.capp_records[0] == blank
    result = purchase(card.transmit, psam.transmit, PurchaseRequest(200, WHEN, updates=capp_updates(0x33)))
    assert isinstance(result, PurchaseResult)
    record = CAPP_RECORD_LAYOUT.parse(command(card.transmit, read_record_sfi(SFI_CAPP, 1), "READ 1A"))
    assert record.body[0] == 0x33 and record.crc_ok
    assert len(card.memory.process_log) == 1


def test_simple_purchase_takes_no_capp_cache() -> None:
    card = powered("sichuan")
    command(card.transmit, select_tunion(), "SELECT")
    init = InitPurchaseRequest(1, 200, bytes.fromhex("510100000001"))
    command(card.transmit, initialize_for_purchase(init, capp=False), "INIT simple")
    assert send(card, update_capp_data_cache(SFI_PROCESS, 0, capp_updates(1)[1].data))[1] == 0x6985


def test_logs_are_cyclic_newest_first(psam: VirtualPsam) -> None:
    card = powered("sichuan")
    for n in range(32):
        request = PurchaseRequest(10, WHEN + dt.timedelta(minutes=n), updates=capp_updates(n)[1:])
        assert isinstance(purchase(card.transmit, psam.transmit, request), PurchaseResult)
    image = read_tunion(card.transmit)
    assert image is not None
    assert [t.atc for t in image.transactions] == list(range(49, 39, -1))
    assert len(image.process_records) == 30
    assert image.process_records[0].line_station == bytes([31]) * 7
    assert image.balance == 5000 - 32 * 10
    assert send(card, read_record_sfi(SFI_TRANSACTIONS, 11))[1] == 0x6A83


def test_overdraft_balance_views(psam: VirtualPsam) -> None:
    card = powered("chongqing")
    command(card.transmit, select_tunion(), "SELECT")

    def balance(p1: int) -> int:
        raw = command(card.transmit, CommandApdu(0x80, 0x5C, p1, 0x02, le=4), "GET BALANCE")
        return int.from_bytes(raw, "big")

    assert [balance(p) for p in (0, 1, 2, 3)] == [2500, 500, 0, 2000]
    result = purchase(card.transmit, psam.transmit, PurchaseRequest(2300, WHEN))
    assert isinstance(result, PurchaseResult) and result.balance_after == 200
    assert [balance(p) for p in (0, 1, 2, 3)] == [200, 500, 300, 0]
    refused = purchase(card.transmit, psam.transmit, PurchaseRequest(201, WHEN))
    assert isinstance(refused, PurchaseFailure) and isinstance(refused.cause, InsufficientBalance)
    log = TRANSACTION_RECORD_LAYOUT.parse(command(card.transmit, read_record_sfi(SFI_TRANSACTIONS, 1), "READ"))
    assert (log.overdraft_limit, log.amount, log.atc) == (500, 2300, 4)


def test_locked_application_answers_9303_but_stays_listed() -> None:
    card = powered("locked-transport")
    assert [e.label for e in read_ppse(card.transmit)] == ["MOT_T_EP", "UnionPay EC"]
    assert send(card, select_tunion())[1] == 0x9303
    assert send(card, get_balance())[1] == 0x6985  # nothing was selected


def test_card_without_transport_application() -> None:
    card = powered("no-transport")
    assert [e.aid for e in read_ppse(card.transmit)] == [bytes.fromhex("A000000333010106")]
    assert send(card, select_tunion())[1] == 0x6A82
    assert read_tunion(card.transmit) is None


def test_ecash_get_data_and_record() -> None:
    card = powered("sichuan")
    image = read_ecash(card.transmit)
    assert image is not None and image.balance == 12345 and image.balance_limit == 100000
    assert send(card, CommandApdu(0x80, 0xCA, 0x9F, 0x4F, le=256))[1] == 0x6A88
    assert send(card, CommandApdu(0x80, 0xA8, 0x00, 0x00, bytes.fromhex("8300"), 256))[1] == 0x6D00
    record = command(card.transmit, CommandApdu(0x00, 0xB2, 0x01, 0x0C, le=256), "READ RECORD")
    assert bytes.fromhex("5A0A6214999900000000013F") in record


def test_uid_for_pcsc_get_data() -> None:
    card = powered("sichuan")
    uid, sw = send(card, "FFCA000000")
    assert sw == 0x9000 and len(uid) == 4 and uid == card.profile.uid


# --- memory and state file -------------------------------------------------------------------------


def test_state_file_keeps_balance_counters_and_logs(tmp_path: Path, psam: VirtualPsam) -> None:
    state = tmp_path / "card.json"
    card = powered("sichuan", state)
    assert not state.exists()
    result = purchase(card.transmit, psam.transmit, PurchaseRequest(200, WHEN))
    assert isinstance(result, PurchaseResult)
    assert json.loads(state.read_text())["memory"]["balance"] == 4800
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]  # no temporary left
    again = powered("sichuan", state)
    image = read_tunion(again.transmit)
    assert image is not None
    assert image.balance == 4800
    assert image.transactions[0].atc == 18
    proof = command(again.transmit, get_transaction_proof(18), "GET TRANSACTION PROOF")
    assert proof == result.mac2 + result.tac


def test_a_failed_state_write_changes_nothing(tmp_path: Path, psam: VirtualPsam) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    card = powered("sichuan", blocker / "card.json")
    failure = purchase(card.transmit, psam.transmit, PurchaseRequest(200, WHEN))
    assert isinstance(failure, PurchaseFailure) and failure.cause.sw == 0x6581  # type: ignore[attr-defined]
    assert (card.memory.balance, card.memory.offline_atc, card.memory.last_proof) == (5000, 17, None)


# --- PSAM ------------------------------------------------------------------------------------------


def test_psam_terminal_number_sequence_and_refusals(tmp_path: Path) -> None:
    device = VirtualPsam.from_profile("demo-psam", state_path=tmp_path / "psam.json")
    device.power_on()
    assert send(device, "00B0960006") == (bytes.fromhex("510100000001"), 0x9000)
    assert send(device, "8072000004" + "00" * 4)[1] == 0x6985  # purchase application not selected
    card = powered("sichuan")
    first = purchase(card.transmit, device.transmit, PurchaseRequest(100, WHEN))
    second = purchase(card.transmit, device.transmit, PurchaseRequest(100, WHEN))
    assert isinstance(first, PurchaseResult) and isinstance(second, PurchaseResult)
    assert second.terminal_sequence == first.terminal_sequence + 1
    restarted = VirtualPsam.from_profile("demo-psam", state_path=tmp_path / "psam.json")
    assert restarted.sequence == second.terminal_sequence + 1
    assert send(device, "8072000004" + "00" * 4)[1] == 0x6985  # MAC2 already verified


def test_psam_refuses_an_unknown_key_version(psam: VirtualPsam) -> None:
    command(psam.transmit, CommandApdu(0x00, 0xA4, 0x00, 0x00, bytes.fromhex("8011")), "SELECT")
    mac1_input = bytes(4) + bytes(2) + (100).to_bytes(4, "big") + b"\x09" + bytes.fromhex("20250601083000")
    mac1_input += b"\x07\x04" + bytes(16)
    assert send(psam, CommandApdu(0x80, 0x70, 0x00, 0x00, mac1_input, 8))[1] == 0x9403


def test_psam_answers_t0_style_with_get_response(psam: VirtualPsam) -> None:
    command(psam.transmit, CommandApdu(0x00, 0xA4, 0x00, 0x00, bytes.fromhex("8011")), "SELECT")
    mac1_input = bytes(4) + bytes(2) + (100).to_bytes(4, "big") + b"\x09" + bytes.fromhex("20250601083000")
    mac1_input += b"\x01\x04" + bytes(16)
    data, sw = send(psam, CommandApdu(0x80, 0x70, 0x00, 0x00, mac1_input, 8))
    assert (data, sw) == (b"", 0x6108)
    answer, sw = send(psam, "00C0000008")
    assert sw == 0x9000 and len(answer) == 8


def test_the_card_refuses_commands_outside_any_application() -> None:
    card = powered("sichuan")
    assert send(card, read_item(0x01))[1] == 0x6985
    assert send(card, CommandApdu(0x00, 0xA4, 0x04, 0x00, AID_TUNION_EP[:5] + b"\x99"))[1] == 0x6A82
    assert send(card, "00C0000010")[1] == 0x6985


def test_the_clone_accepts_any_external_cryptogram() -> None:
    card = powered("cloned")
    command(card.transmit, select_ssse(), "SELECT SSSE")
    command(card.transmit, CommandApdu(0x00, 0x84, 0x00, 0x00, le=16), "GET CHALLENGE")
    command(card.transmit, CommandApdu(0x00, 0x82, 0x00, 0x0A, bytes(16)), "EXTERNAL AUTHENTICATE")
    assert command(card.transmit, read_item(0x08, sfi=6), "READ 08")[2:] == b"510104199001019996"
