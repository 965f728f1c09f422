"""61xx and 6Cxx handling over a scripted card: the exchange sees exactly what a reader would."""

from __future__ import annotations

import pytest

from protocols import CommandApdu, ExchangeFailed, FileNotFound, TruncatedData, command, exchange


class ScriptedCard:
    """A card answering from a table of exact command bytes, recording what it was sent."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = {bytes.fromhex(k): [bytes.fromhex(v) for v in vs] for k, vs in answers.items()}
        self.sent: list[bytes] = []

    def __call__(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        return self.answers[apdu].pop(0)


SELECT_SSSE = CommandApdu(0x00, 0xA4, 0x04, 0x00, bytes.fromhex("7378312E73682EC9E7BBE1B1A3D5CF"))


def test_get_response_after_61xx() -> None:
    fci = "6F1C840F7378312E73682EC9E7BBE1B1A3D5CFA5099F0C03860101"
    card = ScriptedCard({SELECT_SSSE.to_bytes().hex(): ["611B"], "00C000001B": [fci + "9000"]})
    response = exchange(card, SELECT_SSSE)
    assert response.ok
    assert response.data == bytes.fromhex(fci)
    assert card.sent[-1] == bytes.fromhex("00C000001B")


def test_chained_61xx_concatenates() -> None:
    card = ScriptedCard({"00B2010400": ["AAAA6102"], "00C0000002": ["BBBB6101"], "00C0000001": ["CC9000"]})
    response = exchange(card, CommandApdu(0, 0xB2, 1, 4, le=256))
    assert response.data == bytes.fromhex("AAAABBBBCC")


def test_resend_with_exact_le_after_6cxx() -> None:
    card = ScriptedCard({"00B2070000": ["6C0B"], "00B207000B": ["0709" + "41" * 9 + "9000"]})
    data = command(card, CommandApdu(0, 0xB2, 7, 0, le=256), "READ RECORD 07")
    assert data == bytes.fromhex("0709" + "41" * 9)
    assert card.sent == [bytes.fromhex("00B2070000"), bytes.fromhex("00B207000B")]


def test_error_status_raises_named_step() -> None:
    card = ScriptedCard({"00A4040008A00000063201010500": ["6A82"]})
    with pytest.raises(FileNotFound) as info:
        command(card, CommandApdu(0, 0xA4, 4, 0, bytes.fromhex("A000000632010105"), 256), "SELECT T-Union")
    assert info.value.command == "SELECT T-Union"


def test_endless_61xx_chain_is_a_protocol_error() -> None:
    def chatty(apdu: bytes) -> bytes:
        return bytes.fromhex("0161")[1:] + b"\x01"

    with pytest.raises(ExchangeFailed):
        exchange(chatty, CommandApdu(0, 0xB0, 0x95, 0, le=30))


def test_answer_without_status_word() -> None:
    with pytest.raises(TruncatedData):
        exchange(lambda apdu: b"\x90", CommandApdu(0, 0x84, 0, 0, le=8))
