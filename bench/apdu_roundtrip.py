"""APDU round trip through the whole PC/SC stack: pyscard -> pcscd -> vpcd -> TCP -> virtual card.

The card is the virtual 'sichuan' card; each sample is one GET BALANCE with the T-Union
e-purse selected, the shortest real exchange of a bus tap. The card's own time is stamped
at the card and shown apart, so the transport's share stands out.
"""

from __future__ import annotations

import time

from smartcard import scard

from bench.report import percentiles, write
from bench.trace import TracedCard, TraceLog
from protocols.tunion import get_balance, select_tunion
from sscard_sim.card import VirtualCard
from sscard_sim.pcscd import VPCD_PORTS, PcscdBench, wait_for_presence
from sscard_sim.vpcd import VpcdLink

READER = "Virtual PCD 00 00"
N = 1000


class BenchFailure(RuntimeError):
    """The virtual card could not be reached or refused the exchange."""


def _check(hresult: int, what: str) -> None:
    if hresult != scard.SCARD_S_SUCCESS:
        raise BenchFailure(f"{what}: {scard.SCardGetErrorMessage(hresult)}")


def run() -> None:
    log = TraceLog()
    card = TracedCard(VirtualCard.from_profile("sichuan"), "card", log)
    with PcscdBench(), VpcdLink(card, port=VPCD_PORTS[READER]):
        if not wait_for_presence(READER, present=True):
            raise BenchFailure("pcscd never saw the virtual card")
        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        _check(hresult, "SCardEstablishContext")
        hresult, handle, protocol = scard.SCardConnect(
            context, READER, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1 | scard.SCARD_PROTOCOL_T0
        )
        _check(hresult, "SCardConnect")
        hresult, response = scard.SCardTransmit(handle, protocol, list(select_tunion().to_bytes()))
        _check(hresult, "SCardTransmit SELECT")
        if bytes(response[-2:]) != b"\x90\x00":
            raise BenchFailure(f"SELECT T-Union answered {bytes(response[-2:]).hex()}")
        balance = list(get_balance().to_bytes())
        log.clear()
        samples = []
        total_start = time.perf_counter()
        for _ in range(N):
            start = time.perf_counter()
            hresult, response = scard.SCardTransmit(handle, protocol, balance)
            samples.append((time.perf_counter() - start) * 1000)
        total = time.perf_counter() - total_start
        _check(hresult, "SCardTransmit GET BALANCE")
        scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(context)
    _, apdus = log.snapshot()
    stats = percentiles(samples)
    card_stats = percentiles([(a.end - a.start) * 1000 for a in apdus])
    write(
        "apdu_roundtrip",
        [
            {"path": "pyscard->pcscd->vpcd->card", "unit": "ms", **stats, "total_s": total},
            {"path": "of which the virtual card", "unit": "ms", **card_stats},
        ],
        notes=f"{N} GET BALANCE (805C000204) on the virtual 'sichuan' card, T-Union selected; TCP_QUICKACK re-armed",
    )


if __name__ == "__main__":
    run()
