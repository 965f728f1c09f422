"""A plain pyscard client: one card connection through pcscd, as any PC/SC application has it."""

from __future__ import annotations

from smartcard import scard

from protocols.errors import TransportError


class CardGone(ConnectionError, TransportError):
    """SCardTransmit failed or came back empty: the card left the reader."""


class PcscChannel:
    """A shared connection to the card in `reader`, with a `transmit` for protocols conversations."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        hresult, self.context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            raise CardGone(f"SCardEstablishContext: {scard.SCardGetErrorMessage(hresult)}")
        self.handle: int | None = None
        self.protocol = 0
        self.connect()

    def connect(self) -> None:
        hresult, self.handle, self.protocol = scard.SCardConnect(
            self.context, self.reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        if hresult != scard.SCARD_S_SUCCESS:
            self.handle = None
            raise CardGone(f"SCardConnect {self.reader}: {scard.SCardGetErrorMessage(hresult)}")

    def transmit(self, apdu: bytes) -> bytes:
        if self.handle is None:
            raise CardGone("not connected")
        hresult, response = scard.SCardTransmit(self.handle, self.protocol, list(apdu))
        if hresult != scard.SCARD_S_SUCCESS:
            raise CardGone(f"SCardTransmit: {scard.SCardGetErrorMessage(hresult)}")
        if len(response) < 2:
            raise CardGone("SCardTransmit returned no status word")
        return bytes(response)

    def disconnect(self) -> None:
        if self.handle is not None:
            scard.SCardDisconnect(self.handle, scard.SCARD_LEAVE_CARD)
            self.handle = None

    def close(self) -> None:
        self.disconnect()
        scard.SCardReleaseContext(self.context)

    def __enter__(self) -> PcscChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
