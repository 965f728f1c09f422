"""Small card-side emulators for reader tests: each answers just enough to exercise one fault."""

from __future__ import annotations

import threading
from collections.abc import Callable

ATR_ISO14443_4 = bytes.fromhex("3B8880010000000000718100F9")
SELECT = bytes.fromhex("00A404000E315041592E5359532E444446303100")
GET_DATA = bytes.fromhex("80CA000002")
READ_BINARY = bytes.fromhex("00B0950000")
GET_UID = bytes.fromhex("FFCA000000")


class CountingCard:
    """Answers SELECT with 90 00, GET UID with its UID, anything else with a 2-byte count."""

    def __init__(self, uid: bytes = bytes.fromhex("04A1B2C3"), atr: bytes = ATR_ISO14443_4) -> None:
        self.uid = uid
        self._atr = atr
        self.received: list[bytes] = []
        self.powered = False

    def power_on(self) -> bytes:
        self.powered = True
        return self._atr

    def power_off(self) -> None:
        self.powered = False

    def atr(self) -> bytes:
        return self._atr

    def transmit(self, apdu: bytes) -> bytes:
        self.received.append(bytes(apdu))
        if apdu == GET_UID:
            return self.uid + b"\x90\x00"
        if apdu[1] == 0xA4:
            return b"\x90\x00"
        return len(self.received).to_bytes(2, "big") + b"\x90\x00"


class HangingCard(CountingCard):
    """Never answers READ BINARY until `release` is set (teardown must set it)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.hung = threading.Event()

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[1] == 0xB0:
            self.hung.set()
            self.release.wait(30)
        return super().transmit(apdu)


class LeavingCard(CountingCard):
    """Leaves the field in the middle of READ BINARY: the command arrives, no answer ever leaves.

    `leave` pulls the card away (VpcdLink.remove, InProcessReader.remove) from another thread,
    as a hand would; once `gone()` says it is out, the card drops the exchange instead of
    answering (OSError: the bridge closes the connection).
    """

    def __init__(self) -> None:
        super().__init__()
        self.leave: Callable[[], None] | None = None
        self.gone: Callable[[], bool] = lambda: True

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[1] == 0xB0 and self.leave is not None:
            threading.Thread(target=self.leave, daemon=True).start()
            for _ in range(2000):
                if self.gone():
                    break
                threading.Event().wait(0.001)
            raise OSError("the card left the field mid-command")
        return super().transmit(apdu)
