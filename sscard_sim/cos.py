"""The card operating system's common ground: refusals, length rules, tearing, applications.

Every application of the virtual card (SSSE, T-Union, e-cash, PPSE) and the PSAM answer
commands through the same few rules, gathered here so that they behave alike: a refusal is
an exception carrying the status word; a wrong Le is answered 6Cxx with the exact length,
as the cards readers were written against do; a tear (power lost in the middle of a command)
surfaces as `CardTorn`, a connection error, because for the reader it is exactly that: the
card is gone and no answer comes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Protocol

from protocols.apdu import CommandApdu
from protocols.errors import ProtocolError, TransportError
from reader.log import get_logger
from sscard_sim.state import StateFileError

_log = get_logger(component="virtual-chip")

SW_OK = 0x9000


class Refusal(Exception):
    """The card refuses the command with status word `sw` (and no data)."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"SW {sw:04X}")
        self.sw = sw


class MoreData(Exception):
    """Answer `data` now with 61xx: `remaining` more bytes wait for GET RESPONSE."""

    def __init__(self, data: bytes, remaining: int) -> None:
        super().__init__(f"61{remaining & 0xFF:02X}")
        self.data = data
        self.remaining = remaining

    def to_bytes(self) -> bytes:
        return self.data + bytes((0x61, self.remaining & 0xFF))


class CardTorn(ConnectionAbortedError, TransportError):
    """Power was lost while the card processed a command: no answer ever leaves the card."""


TearHook = Callable[[str], None]
"""Called by the card at named points inside a command; raising `CardTorn` tears it there."""


def no_tear(point: str) -> None:
    """The default tear hook: power never fails."""


def exact_le(data: bytes, command: CommandApdu) -> bytes:
    """`data` if Le asks for all of it (00, absent, or exactly its length), else refuse with 6Cxx."""
    if command.le is None or command.le == 256 or command.le == len(data):
        return data
    raise Refusal(0x6C00 | (len(data) & 0xFF))


def window(content: bytes, offset: int, command: CommandApdu) -> bytes:
    """READ BINARY: Le bytes from `offset`; 6B00 past the end, 6Cxx when Le reaches beyond it."""
    if offset >= len(content):
        raise Refusal(0x6B00)
    rest = content[offset:]
    if command.le is None or command.le == 256:
        return rest
    if command.le > len(rest):
        raise Refusal(0x6C00 | (len(rest) & 0xFF))
    return rest[: command.le]


class Application(Protocol):
    """A selectable application (or directory) of the virtual card."""

    name: str
    aid: bytes

    def select(self) -> bytes:
        """Answer SELECT: the FCI, or raise `Refusal` (9303 for a permanently locked application)."""
        ...

    def deselect(self) -> None:
        """Leave the application: its volatile state (security status, pending purchase) is lost."""
        ...

    def handle(self, command: CommandApdu) -> bytes:
        """Answer a command while selected; return the data (status 9000) or raise `Refusal`."""
        ...


class Chip(abc.ABC):
    """What the virtual card and the virtual PSAM share as chips: power, framing and status words.

    Power on and off clear the volatile state; a command that reaches an unpowered chip powers
    it, as a field does for a card that came back before pcscd noticed it had gone. Commands
    are parsed here, GET RESPONSE is routed, refusals and 61xx become status words, and a
    state file that cannot be written is answered 6581 (memory failure) with nothing changed.
    """

    powered = False
    _pending_response = b""

    @property
    @abc.abstractmethod
    def chip_atr(self) -> bytes:
        """The ATR the chip was personalised with."""

    @abc.abstractmethod
    def _lose_volatile_state(self) -> None:
        """Forget what does not survive a power cut (selection, sessions, pending answers)."""

    @abc.abstractmethod
    def _answer(self, command: CommandApdu) -> bytes:
        """The data of the answer to any command but GET RESPONSE, or raise Refusal/MoreData."""

    @abc.abstractmethod
    def _get_response(self, command: CommandApdu, pending: bytes) -> bytes:
        """GET RESPONSE for the `pending` answer."""

    def power_on(self) -> bytes:
        self._lose_volatile_state()
        self.powered = True
        return self.chip_atr

    def power_off(self) -> None:
        self._lose_volatile_state()
        self.powered = False

    def atr(self) -> bytes:
        return self.chip_atr

    def transmit(self, apdu: bytes) -> bytes:
        if not self.powered:
            _log.debug("chip_powered_by_command", chip=type(self).__name__)
            self.power_on()
        pending, self._pending_response = self._pending_response, b""
        try:
            command = CommandApdu.parse(apdu)
        except ProtocolError:
            return (0x6700).to_bytes(2, "big")
        try:
            if (command.cla, command.ins) == (0x00, 0xC0):
                data = self._get_response(command, pending)
            else:
                data = self._answer(command)
        except Refusal as refusal:
            return refusal.sw.to_bytes(2, "big")
        except MoreData as more:
            return more.to_bytes()
        except StateFileError as error:
            _log.error("chip_state_write_failed", chip=type(self).__name__, error=str(error))
            return (0x6581).to_bytes(2, "big")
        return data + SW_OK.to_bytes(2, "big")
