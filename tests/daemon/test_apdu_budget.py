"""What a bus tap sends on the air, counted on the card's and the PSAM's side of vpcd.

Every command costs a real card 1.5-5 ms plus its frames, inside the 400 ms a purchase may
take (DB31/T 239-2020): what is constant is read once, and nothing is asked twice.
"""

from __future__ import annotations

from pathlib import Path

from protocols.tunion import psam_read_terminal_number
from sscard_sim.card import VirtualCard
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import TAP_DAY, ManualClock, Terminal, TracedCard, terminal_config

INS_GET_RESPONSE = 0xC0
INS_GET_BALANCE = 0x5C


def test_the_psam_terminal_number_is_read_once_per_sam_channel(psam: TearingCard, tmp_path: Path) -> None:
    read_number = bytes(psam_read_terminal_number())
    inner = psam.card
    traced = TracedCard(inner)
    psam.card = traced
    try:
        config = terminal_config("bus", tmp_path)
        clock = ManualClock(TAP_DAY)
        with Terminal(config, clock) as validator:
            first = validator.tap(VirtualCard.from_profile("sichuan"))
            clock.advance(61)
            second = validator.tap(VirtualCard.from_profile("chongqing"))
    finally:
        psam.card = inner
    assert (first.record["result"], second.record["result"]) == ("accepted", "accepted")
    assert second.record["tac"] is not None
    assert traced.commands.count(read_number) == 1, "the terminal number is a constant of the PSAM"


def test_a_bus_tap_asks_the_card_nothing_twice_and_needs_no_get_response(psam: TearingCard, tmp_path: Path) -> None:
    config = terminal_config("bus", tmp_path)
    card = TracedCard(VirtualCard.from_profile("sichuan"))
    with Terminal(config, ManualClock(TAP_DAY)) as validator:
        tap = validator.tap(card)
    assert tap.record["result"] == "accepted"
    sent = card.commands
    assert all(apdu[1] != INS_GET_RESPONSE for apdu in sent), "SELECT asks for its FCI with Le"
    reads = [apdu for apdu in sent if apdu[1] in (0xB0, 0xB2, 0x5C)]
    assert len(reads) == len(set(reads)), "each file, record and balance is read once"


def test_a_first_rider_needs_at_most_25_commands_and_a_repeat_rider_18(psam: TearingCard, tmp_path: Path) -> None:
    """Counted at both devices: the SSSE first, the e-purse selected once, no GET BALANCE, the
    PSAM's number read as its channel opened, and a repeat rider's band kept (no authentication)."""
    inner = psam.card
    traced_psam = TracedCard(inner)
    psam.card = traced_psam
    card = TracedCard(VirtualCard.from_profile("sichuan"))
    clock = ManualClock(TAP_DAY)
    counts = []
    try:
        with Terminal(terminal_config("bus", tmp_path), clock) as validator:
            for _ in range(2):
                card.clear()
                traced_psam.clear()
                tap = validator.tap(card)
                assert tap.record["result"] == "accepted" and tap.record["fare"] == 200
                counts.append((len(card.commands), len(traced_psam.commands)))
                assert all(apdu[1] != INS_GET_BALANCE for apdu in card.commands), "INITIALIZE answers the balance"
                clock.advance(3600)
    finally:
        psam.card = inner
    (first_card, first_psam), (again_card, again_psam) = counts
    assert first_card + first_psam <= 25, counts
    assert again_card + again_psam <= 18, counts
    assert again_psam < first_psam, "no SSSE authentication for the repeat rider"
