"""APDU round trip through the whole PC/SC stack: pyscard -> pcscd -> vpcd -> TCP -> virtual card."""

from __future__ import annotations

import time

from smartcard import scard

from bench.report import percentiles, write
from reader.backends.pcsc import wait_for_presence
from reader.sim.pcscd import VPCD_PORTS, PcscdBench
from reader.sim.vpcd import VpcdLink

READER = "Virtual PCD 00 00"
ATR = bytes.fromhex("3B8880010000000000718100F9")
N = 1000


class _EchoCard:
    def power_on(self) -> bytes:
        return ATR

    def power_off(self) -> None:
        return None

    def atr(self) -> bytes:
        return ATR

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x90\x00"


def run() -> None:
    with PcscdBench() as _bench, VpcdLink(_EchoCard(), port=VPCD_PORTS[READER]):
        if not wait_for_presence(READER, present=True):
            raise RuntimeError("pcscd never saw the virtual card")
        _, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        hresult, handle, protocol = scard.SCardConnect(
            context, READER, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1 | scard.SCARD_PROTOCOL_T0
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise RuntimeError(scard.SCardGetErrorMessage(hresult))
        select = list(bytes.fromhex("00A404000FA0000006320101050000000000000000"))
        samples = []
        total_start = time.perf_counter()
        for _ in range(N):
            start = time.perf_counter()
            hresult, _response = scard.SCardTransmit(handle, protocol, select)
            samples.append((time.perf_counter() - start) * 1000)
        total = time.perf_counter() - total_start
        scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(context)
    stats = percentiles(samples)
    write(
        "apdu_roundtrip",
        [{"path": "pyscard->pcscd->vpcd->card", "unit": "ms", **stats, "total_s_for_1000": total}],
        notes="one SCardTransmit per sample, card answers 90 00 at once (TCP_QUICKACK re-armed)",
    )


if __name__ == "__main__":
    run()
