"""The PC/SC bench itself: pcscd, vpcd and a card attached through the real stack."""

from __future__ import annotations

import json
import subprocess
import sys

from smartcard import scard

from tests.conftest import SLOT0, SLOT1, wait_for_state
from tests.support import VPCD

ATR = bytes.fromhex("3B8880010000000000718100F9")


class CountingCard:
    """A card that answers SELECT with 90 00 and numbers every other answer."""

    def __init__(self) -> None:
        self.powered = False
        self.received: list[bytes] = []

    def power_on(self) -> bytes:
        self.powered = True
        return ATR

    def power_off(self) -> None:
        self.powered = False

    def atr(self) -> bytes:
        return ATR

    def transmit(self, apdu: bytes) -> bytes:
        self.received.append(apdu)
        if apdu[1] == 0xA4:
            return b"\x90\x00"
        return len(self.received).to_bytes(2, "big") + b"\x90\x00"


def sscard_readers() -> dict[str, dict[str, str | None]]:
    command = [sys.executable, "-m", "reader.cli", "readers", "--config", VPCD, "--json"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {row["name"]: row for row in json.loads(out)}


def test_both_virtual_readers_are_listed(pcscd: object) -> None:
    rows = sscard_readers()
    assert rows[SLOT0]["state"] == "empty"
    assert rows[SLOT1]["state"] == "empty"


def test_sscard_readers_reports_insert_and_remove(attach) -> None:  # type: ignore[no-untyped-def]
    link = attach(CountingCard(), SLOT0)
    rows = sscard_readers()
    assert rows[SLOT0]["state"] == "present"
    assert rows[SLOT0]["atr"] == ATR.hex().upper()
    assert rows[SLOT1]["state"] == "empty"
    link.remove()
    assert wait_for_state(SLOT0, present=False)
    rows = sscard_readers()
    assert rows[SLOT0]["state"] == "empty"
    assert rows[SLOT0]["atr"] is None


def test_thousand_apdus_reach_the_card_in_order(attach) -> None:  # type: ignore[no-untyped-def]
    card = CountingCard()
    attach(card, SLOT1)
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hresult == scard.SCARD_S_SUCCESS
    hresult, handle, protocol = scard.SCardConnect(
        context, SLOT1, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
    )
    assert hresult == scard.SCARD_S_SUCCESS
    try:
        for n in range(1, 1001):
            apdu = [0x80, 0xCA, 0x00, 0x00, 0x02]
            hresult, response = scard.SCardTransmit(handle, protocol, apdu)
            assert hresult == scard.SCARD_S_SUCCESS
            assert bytes(response) == n.to_bytes(2, "big") + b"\x90\x00"
        assert len(card.received) == 1000
    finally:
        scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(context)
