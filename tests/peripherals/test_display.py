"""Line display on a pseudo-terminal: the protocol bytes, answers, timeouts, unplug and restore."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reader.peripherals.display import LineDisplay, beep_pattern, text_command
from reader.peripherals.errors import (
    PeripheralProtocolError,
    PeripheralRejected,
    PeripheralTimeout,
    PeripheralUnavailable,
)
from tests.peripherals.pty_peripherals import WAIT, DisplaySim, PtyDevice, wait_until

BLANK_SCREEN = [b"TEXT 0 \n", b"TEXT 1 \n"]


@pytest.fixture
def sim(pty_device: PtyDevice) -> Iterator[DisplaySim]:
    simulator = DisplaySim(pty_device)
    yield simulator
    simulator.stop()


@pytest.fixture
def display(pty_device: PtyDevice, sim: DisplaySim) -> Iterator[LineDisplay]:
    screen = LineDisplay(
        str(pty_device.path), rows=2, columns=16, answer_timeout=0.3, backoff_initial=0.02, backoff_max=0.1
    )
    assert screen.connect()
    # Connecting puts the host's (blank) screen up, wiping what a previous run left.
    assert sim.received == BLANK_SCREEN
    sim.received.clear()
    yield screen
    screen.close()


def test_show_sends_every_row(display: LineDisplay, sim: DisplaySim) -> None:
    display.show(["请刷卡", "Tap card"])
    assert sim.received == ["TEXT 0 请刷卡\n".encode(), b"TEXT 1 Tap card\n"]
    sim.received.clear()
    display.show(["余额 12.50"])
    assert sim.received == ["TEXT 0 余额 12.50\n".encode(), b"TEXT 1 \n"]


def test_text_is_cleaned_and_clipped(display: LineDisplay, sim: DisplaySim) -> None:
    display.show(["a\tb\r\nc", "0123456789abcdefXYZ"])
    assert sim.received == [b"TEXT 0 a b  c\n", b"TEXT 1 0123456789abcdef\n"]


def test_text_command_fits_the_line_limit() -> None:
    line = text_command(3, "漢" * 200, columns=200)
    assert len(line) <= 256
    assert line.startswith(b"TEXT 3 ") and line.endswith(b"\n")
    assert line.decode().count("漢") == (256 - len(b"TEXT 3 \n")) // 3


def test_show_rejects_bad_arguments(display: LineDisplay) -> None:
    with pytest.raises(ValueError, match="2 rows"):
        display.show(["a", "b", "c"])
    with pytest.raises(TypeError):
        display.show("one string")


def test_beep_patterns(display: LineDisplay, sim: DisplaySim) -> None:
    display.beep("ok")
    display.beep("error")
    display.beep("100,50,100")
    assert sim.received == [b"BEEP 80\n", b"BEEP 150,100,150,100,150\n", b"BEEP 100,50,100\n"]


@pytest.mark.parametrize("pattern", ["loud", "100,50", "0", "6000", "100;50;100", "", ",".join(["10"] * 17)])
def test_bad_beep_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"pattern|durations"):
        beep_pattern(pattern)


def test_err_answer_is_rejected(display: LineDisplay, sim: DisplaySim) -> None:
    sim.script = [b"ERR buzzer broken\n"]
    with pytest.raises(PeripheralRejected, match="BEEP refused: buzzer broken"):
        display.beep("ok")


def test_unexpected_answer_is_a_protocol_error(display: LineDisplay, sim: DisplaySim) -> None:
    sim.script = [b"HELLO\n"]
    with pytest.raises(PeripheralProtocolError, match="HELLO"):
        display.show(["x"])


def test_silent_display_times_out_and_late_answer_is_discarded(
    display: LineDisplay, sim: DisplaySim, pty_device: PtyDevice
) -> None:
    sim.script = [None]
    with pytest.raises(PeripheralTimeout, match="no answer to BEEP"):
        display.beep("ok")
    # The answer arrives after the deadline and sits unread on the host's side ...
    sim.send_raw(b"OK\n")
    assert wait_until(lambda: pty_device.pending_on_slave() == 3)
    # ... and must not be taken for the answer to the next command, which is refused.
    sim.script = [b"ERR busy\n"]
    with pytest.raises(PeripheralRejected, match="busy"):
        display.beep("ok")
    display.beep("ok")


def test_unplug_then_replug_restores_screen(display: LineDisplay, sim: DisplaySim, pty_device: PtyDevice) -> None:
    display.show(["请刷卡"])
    sim.stop()
    pty_device.unplug()
    with pytest.raises(PeripheralUnavailable):
        display.show(["暂停服务", "Out of service"])
    assert not display.connected

    pty_device.plug()
    replugged = DisplaySim(pty_device)
    try:
        assert display.wait_connected(WAIT)
        # The display came back blank; the host puts up the latest screen it was asked for.
        expected = ["TEXT 0 暂停服务\n".encode(), b"TEXT 1 Out of service\n"]
        assert wait_until(lambda: replugged.received == expected)
        display.beep("ok")
        assert replugged.received[-1] == b"BEEP 80\n"
    finally:
        replugged.stop()


def test_replug_during_beep_restores_screen(display: LineDisplay, sim: DisplaySim, pty_device: PtyDevice) -> None:
    display.show(["请刷卡", "Tap card"])
    sim.stop()
    pty_device.unplug()
    pty_device.plug()
    replugged = DisplaySim(pty_device)
    try:
        # Re-plugged while idle: the beep reopens the port itself, then restores the screen.
        display.beep("denied")
        assert replugged.received == [b"BEEP 400\n", "TEXT 0 请刷卡\n".encode(), b"TEXT 1 Tap card\n"]
    finally:
        replugged.stop()


def test_closed_display_refuses_commands(display: LineDisplay) -> None:
    display.close()
    with pytest.raises(PeripheralUnavailable, match="closed"):
        display.show(["x"])
