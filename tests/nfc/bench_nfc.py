"""APDU round trips through the NFC backend: nfcpy udp, and the PN532 simulator on a pty.

Run inside the isolated namespace (it binds a UDP port):

    /work/isolate .venv/bin/python -m tests.nfc.bench_nfc [N]

Prints median, p99 and max for a short SELECT and for a 260-byte command whose 257-byte
answer is chained both ways.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable

from reader.backends.nfc import NfcReader
from sscard_sim.nfc_udp import NfcUdpCard
from sscard_sim.pn532 import Pn532Simulator
from tests.nfc.conftest import SSSE_AID, ScriptedCard, echo, select


def measure(transmit: Callable[[bytes], bytes], apdu: bytes, count: int) -> str:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        transmit(apdu)
        times.append(time.perf_counter() - start)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (
        f"median {statistics.median(times) * 1e3:.3f} ms  mean {statistics.fmean(times) * 1e3:.3f} ms  "
        f"p99 {p99 * 1e3:.3f} ms  max {times[-1] * 1e3:.3f} ms  (n={count})"
    )


def run(label: str, path: str, count: int) -> None:
    reader = NfcReader(path, targets=("106A",))
    try:
        channel = reader.wait_for_card(5.0, threading.Event())
        assert channel is not None, f"{label}: no card"
        print(f"{label} SELECT        : {measure(channel.transmit, select(SSSE_AID), count)}")
        print(f"{label} 260 B chained : {measure(channel.transmit, echo(bytes(255)), count // 2)}")
    finally:
        reader.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with NfcUdpCard(ScriptedCard()) as card:
        run("udp  ", card.path, count)
    with Pn532Simulator(ScriptedCard()) as simulator:
        run("pn532", simulator.path, count)


if __name__ == "__main__":
    main()
