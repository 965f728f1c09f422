"""The exchange rules every card conversation goes through, over a plain `transmit` function.

Written against `Transmit = Callable[[bytes], bytes]` (command APDU in, data + SW out) so
that it runs the same over pcscd, nfcpy, a virtual card in the same process, or a stored
dump replayed offline. Two procedure statuses are absorbed here and never reach callers:

- 61xx: more data waits; fetch it with GET RESPONSE (00 C0 00 00 xx) and concatenate. It is
  followed whatever the case of the command, because contactless SSSE cards answer a SELECT
  sent without Le with 611E.
- 6Cxx: wrong Le; resend the same command once with Le = xx.
"""

from __future__ import annotations

from collections.abc import Callable

from protocols.apdu import CommandApdu, ResponseApdu
from protocols.errors import ExchangeFailed

Transmit = Callable[[bytes], bytes]
"""Send one command APDU, return the response data followed by SW1 SW2."""

MAX_GET_RESPONSE = 32
"""Longest 61xx chain accepted (32 x 256 bytes is far beyond any answer of these cards)."""


def get_response(length: int) -> CommandApdu:
    """GET RESPONSE for `length` bytes (1..256)."""
    return CommandApdu(0x00, 0xC0, 0x00, 0x00, le=length)


def exchange(transmit: Transmit, command: CommandApdu) -> ResponseApdu:
    """Send `command`, follow 61xx and 6Cxx, and return the final response (any status)."""
    response = ResponseApdu.parse(transmit(command.to_bytes()))
    if response.sw1 == 0x6C:
        response = ResponseApdu.parse(transmit(command.with_le(response.sw2 or 256).to_bytes()))
    data = response.data
    rounds = 0
    while response.sw1 == 0x61:
        rounds += 1
        if rounds > MAX_GET_RESPONSE:
            raise ExchangeFailed("response APDU", "sw", len(data), f"more than {MAX_GET_RESPONSE} chained 61xx answers")
        response = ResponseApdu.parse(transmit(get_response(response.sw2 or 256).to_bytes()))
        data += response.data
    return ResponseApdu(data, response.sw)


def command(transmit: Transmit, apdu: CommandApdu, name: str) -> bytes:
    """Exchange `apdu` and return its data; any status but 9000 raises the typed error naming `name`."""
    return exchange(transmit, apdu).check(name)
