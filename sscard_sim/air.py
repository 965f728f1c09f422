"""Physical-link latency for virtual cards: what the RF field and the chip cost per APDU.

A virtual card answers in microseconds; a real contactless card needs its bytes carried at
106 kbit/s and takes milliseconds to compute and to write EEPROM. `AirInterface` wraps any
`CardSide` and makes each answer leave when a real card's would, so that a benchmark can
show how much of a realistic tap is the terminal's own work. `ContactInterface` does the
same for a PSAM in a contact slot (ISO/IEC 7816-3 characters at the slot's baud rate).

    card = AirInterface(VirtualCard.from_profile("sichuan"))
    psam = ContactInterface(VirtualPsam.from_profile("demo-psam"))

The model (cards.md §6.2):
- ISO/IEC 14443 Type A at fc/128 ≈ 106 kbit/s: one bit lasts 128/fc ≈ 9.44 µs, a byte on
  air is 8 data bits and a parity bit, a frame adds its start and end of communication.
- Each APDU travels in an I-block: PCB and a 2-byte CRC around the APDU (no CID, no NAD).
  A block longer than the receiver's frame size (FSC towards the card, FSD towards the
  reader) is chained, and every chained block is acknowledged by a 3-byte R(ACK).
- Each frame is followed by the frame delay time before the other side answers; 1236/fc
  (≈ 91 µs) is used for every turn-around [inferred: ISO/IEC 14443-3 FDT, not confirmed by
  a located source].
- Activation at power-on (REQA/ATQA, anticollision and SELECT for a 4- or 7-byte UID,
  RATS/ATS) is made of the same frames, after the field's settling time.
- The chip's own time per command depends on what the command does (a SELECT, a read, a
  cryptographic step, a RAM cache update, the debit's EEPROM commit). No source gives these
  for social security cards: the defaults are assumptions of this model and are meant to be
  replaced by measured values of a real card (`CardProcessing`).

The wrapped card's own computing time is counted inside the modelled time, not added to
it: the answer leaves at `start + modelled`, or at once if the virtual card was slower.
Waiting-time extensions (S(WTX)) and retransmissions are not modelled.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reader.backends.base import CardSide

FC_HZ = 13.56e6
"""The carrier frequency of ISO/IEC 14443."""


class CommandClass(enum.Enum):
    """What a command makes the chip do, which decides its processing time."""

    SELECT = "select"
    READ = "read"
    CHALLENGE = "challenge"
    CRYPTO = "crypto"
    PURCHASE_INIT = "purchase init"
    CACHE_UPDATE = "cache update"
    WRITE = "write"
    DEBIT = "debit"
    OTHER = "other"


_CLASS_BY_INS: dict[int, CommandClass] = {
    0xA4: CommandClass.SELECT,
    0xB0: CommandClass.READ,  # READ BINARY
    0xB2: CommandClass.READ,  # READ RECORD
    0xC0: CommandClass.READ,  # GET RESPONSE
    0xCA: CommandClass.READ,  # GET DATA
    0x5C: CommandClass.READ,  # GET BALANCE
    0x5A: CommandClass.READ,  # GET TRANSACTION PROOF (a stored answer)
    0x84: CommandClass.CHALLENGE,
    0x88: CommandClass.CRYPTO,  # INTERNAL AUTHENTICATE
    0x82: CommandClass.CRYPTO,  # EXTERNAL AUTHENTICATE
    0x70: CommandClass.CRYPTO,  # PSAM MAC1
    0x72: CommandClass.CRYPTO,  # PSAM MAC2 verification
    0xF0: CommandClass.CRYPTO,  # PSAM VERIFY CARD (project convention)
    0xF2: CommandClass.CRYPTO,  # PSAM EXTERNAL CRYPTOGRAM (project convention)
    0x1A: CommandClass.CRYPTO,  # PSAM key diversification
    0xFA: CommandClass.CRYPTO,  # PSAM MAC computation
    0x50: CommandClass.PURCHASE_INIT,
    0x54: CommandClass.DEBIT,
    0xD6: CommandClass.WRITE,  # UPDATE BINARY
    0xDC: CommandClass.WRITE,  # UPDATE RECORD (CLA 80: UPDATE CAPP DATA CACHE, see below)
    0x1E: CommandClass.WRITE,  # APPLICATION BLOCK
}


def command_class(apdu: bytes) -> CommandClass:
    """The class of a command APDU, from its CLA and INS."""
    if len(apdu) < 4:
        return CommandClass.OTHER
    cla, ins = apdu[0], apdu[1]
    if ins == 0xDC and cla & 0xF0 == 0x80:
        return CommandClass.CACHE_UPDATE  # held in RAM until the DEBIT commits it
    return _CLASS_BY_INS.get(ins, CommandClass.OTHER)


@dataclass(frozen=True)
class CardProcessing:
    """The chip's time per command class, in seconds.

    The card defaults are assumptions, of the order that public descriptions of CPU transit
    cards suggest (the debit's EEPROM commit and MAC/TAC dominate); override them with a
    real card's figures.
    """

    times: Mapping[CommandClass, float] = field(
        default_factory=lambda: {
            CommandClass.SELECT: 0.002,
            CommandClass.READ: 0.0015,
            CommandClass.CHALLENGE: 0.001,
            CommandClass.CRYPTO: 0.005,
            CommandClass.PURCHASE_INIT: 0.005,
            CommandClass.CACHE_UPDATE: 0.002,
            CommandClass.WRITE: 0.008,
            CommandClass.DEBIT: 0.025,
        }
    )
    default: float = 0.002

    def time_for(self, apdu: bytes) -> float:
        return self.times.get(command_class(apdu), self.default)


PSAM_PROCESSING = CardProcessing(
    times={
        CommandClass.SELECT: 0.002,
        CommandClass.READ: 0.001,
        CommandClass.CHALLENGE: 0.001,
        CommandClass.CRYPTO: 0.008,
    },
    default=0.002,
)
"""Assumed PSAM times: key diversification and MAC steps in a contact secure module."""


@dataclass(frozen=True)
class AirTiming:
    """ISO/IEC 14443 Type A framing at 106 kbit/s (see the module docstring)."""

    bit_time: float = 128 / FC_HZ
    bits_per_byte: int = 9
    frame_bits: int = 2
    block_overhead: int = 3
    ack_bytes: int = 3
    fsc: int = 256
    fsd: int = 256
    frame_delay: float = 1236 / FC_HZ
    field_settle: float = 0.005
    uid_length: int = 7
    ats_length: int = 13

    def frame(self, size: int) -> float:
        """Air time of one frame of `size` bytes, with the frame delay that precedes its answer."""
        return (size * self.bits_per_byte + self.frame_bits) * self.bit_time + self.frame_delay

    def transfer(self, size: int, frame_size: int) -> float:
        """One direction of an APDU exchange: I-blocks (chained if needed) and their R(ACK)s."""
        room = max(1, frame_size - self.block_overhead)
        blocks = max(1, math.ceil(size / room))
        last = size - room * (blocks - 1)
        chained = (blocks - 1) * (self.frame(room + self.block_overhead) + self.frame(self.ack_bytes))
        return chained + self.frame(last + self.block_overhead)

    def exchange(self, command: int, response: int) -> float:
        """Air time of one command APDU of `command` bytes and its answer of `response` bytes."""
        return self.transfer(command, self.fsc) + self.transfer(response, self.fsd)

    def activation(self) -> float:
        """Field settling, REQA/ATQA, anticollision and SELECT per cascade level, RATS/ATS."""
        reqa = (7 + self.frame_bits) * self.bit_time + self.frame_delay  # a 7-bit short frame
        levels = 1 if self.uid_length <= 4 else (2 if self.uid_length <= 7 else 3)
        per_level = (
            self.frame(2)  # SEL, NVB
            + self.frame(5)  # UID CLn (4 bytes) and BCC
            + self.frame(9)  # SELECT: SEL, NVB, UID CLn, BCC, CRC
            + self.frame(3)  # SAK and CRC
        )
        rats = self.frame(4) + self.frame(self.ats_length)
        return self.field_settle + reqa + self.frame(2) + levels * per_level + rats


@dataclass(frozen=True)
class ContactTiming:
    """ISO/IEC 7816-3 T=0 characters: 12 etu each (start, 8 data, parity, 2 guard) at `baud`.

    The default 38400 baud is what a transit PSAM slot runs at (cards.md §6.2). A command
    costs its 5-byte header, one procedure byte, its data, the answer data and SW1 SW2.
    """

    baud: float = 38_400
    etu_per_char: int = 12

    def exchange(self, command: int, response: int) -> float:
        return (command + 1 + response) * self.etu_per_char / self.baud


Sleep = Callable[[float], None]


class _LatencyCard:
    """A `CardSide` whose answers leave when the modelled link and chip would let them."""

    def __init__(self, card: CardSide, processing: CardProcessing, sleep: Sleep) -> None:
        self.card = card
        self.processing = processing
        self._sleep = sleep
        self.modelled_s = 0.0
        """Total modelled time so far (air or line time plus processing), for reports."""

    def _link_time(self, command: int, response: int) -> float:
        raise NotImplementedError

    def _power_on_time(self) -> float:
        return 0.0

    def _hold_until(self, start: float, modelled: float) -> None:
        self.modelled_s += modelled
        left = start + modelled - time.perf_counter()
        if left > 0:
            self._sleep(left)

    def power_on(self) -> bytes:
        start = time.perf_counter()
        atr = self.card.power_on()
        self._hold_until(start, self._power_on_time())
        return atr

    def power_off(self) -> None:
        self.card.power_off()

    def atr(self) -> bytes:
        return self.card.atr()

    def transmit(self, apdu: bytes) -> bytes:
        start = time.perf_counter()
        response = self.card.transmit(apdu)
        self._hold_until(start, self._link_time(len(apdu), len(response)) + self.processing.time_for(apdu))
        return response


class AirInterface(_LatencyCard):
    """A contactless card behind ISO/IEC 14443 Type A at 106 kbit/s."""

    def __init__(
        self,
        card: CardSide,
        timing: AirTiming | None = None,
        processing: CardProcessing | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        super().__init__(card, processing or CardProcessing(), sleep)
        self.timing = timing or AirTiming()

    def _link_time(self, command: int, response: int) -> float:
        return self.timing.exchange(command, response)

    def _power_on_time(self) -> float:
        return self.timing.activation()


class ContactInterface(_LatencyCard):
    """A PSAM in a contact slot speaking T=0."""

    def __init__(
        self,
        card: CardSide,
        timing: ContactTiming | None = None,
        processing: CardProcessing | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        super().__init__(card, processing or PSAM_PROCESSING, sleep)
        self.timing = timing or ContactTiming()

    def _link_time(self, command: int, response: int) -> float:
        return self.timing.exchange(command, response)
