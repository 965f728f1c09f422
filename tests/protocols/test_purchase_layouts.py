"""Byte order of the purchase structures a debit reads money from, pinned by vectors written out
from the layouts that reference documents state, never by building them with our own code.

Source of the INITIALIZE FOR (CAPP) PURCHASE answer: /work/shared/reference/cards.md, section
"INITIALIZE FOR (CAPP) PURCHASE", response table (15 bytes + SW): old balance including the
overdraft (4 bytes), offline ATC (2), overdraft limit (3), key version (1), algorithm id (1),
card random (4), as read by the Shanghai metro gate (`init_for_capp_purchase`, usable balance
= old balance − overdraft limit) and a public reader implementation; multi-byte numbers of the
PBOC/JT/T 978 e-purse are big-endian. No public trace with a non-zero overdraft was found, so
the vector below is that table written out by hand, with values whose bytes all differ, so any
other byte order or offset reads a different number.

The 0x1A CAPP record's length is a single byte (CAPP_RECORD_LAYOUT), so it has no byte order
to pin.
"""

from __future__ import annotations

from protocols import tunion as tu

# balance 0x00012345 fen (745.65 yuan incl. overdraft) | ATC 0x0102 | overdraft 0x00C350 (500.00
# yuan) | key version 0x03 | algorithm 0x00 | random A1 B2 C3 D4
INIT_ANSWER = bytes.fromhex("00012345" + "0102" + "00C350" + "03" + "00" + "A1B2C3D4")


def test_initialize_answer_fields_are_big_endian_at_their_offsets() -> None:
    answer = tu.INIT_PURCHASE_ANSWER_LAYOUT.parse(INIT_ANSWER)
    assert answer.balance == 0x012345 == 74_565
    assert answer.offline_atc == 0x0102 == 258
    assert answer.overdraft_limit == 0xC350 == 50_000
    assert (answer.key_version, answer.algorithm_id, answer.card_random) == (3, 0, bytes.fromhex("A1B2C3D4"))


def test_usable_balance_is_the_balance_less_the_overdraft_limit() -> None:
    answer = tu.INIT_PURCHASE_ANSWER_LAYOUT.parse(INIT_ANSWER)
    assert answer.usable_balance == 74_565 - 50_000 == 24_565


def test_an_overdraft_of_one_fen_in_the_last_byte() -> None:
    """The limit's least significant byte is the last of its three (offset 8 of the answer)."""
    raw = bytearray(INIT_ANSWER)
    raw[6:9] = b"\x00\x00\x01"
    assert tu.INIT_PURCHASE_ANSWER_LAYOUT.parse(bytes(raw)).overdraft_limit == 1
    raw[6:9] = b"\x01\x00\x00"
    assert tu.INIT_PURCHASE_ANSWER_LAYOUT.parse(bytes(raw)).overdraft_limit == 0x010000
