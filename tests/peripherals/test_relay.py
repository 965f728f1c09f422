"""Gate relay on a pseudo-terminal: the exact LCUS bytes, pulses, unplug and reconnect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reader.peripherals.errors import PeripheralUnavailable
from reader.peripherals.relay import GateRelay, lcus_command
from tests.peripherals.pty_peripherals import WAIT, PtyDevice, wait_until

ON_1 = bytes.fromhex("A0 01 01 A2")
OFF_1 = bytes.fromhex("A0 01 00 A1")


@pytest.fixture
def relay(pty_device: PtyDevice) -> Iterator[GateRelay]:
    gate = GateRelay(str(pty_device.path), backoff_initial=0.02, backoff_max=0.1)
    yield gate
    gate.close()


def test_lcus_command_bytes() -> None:
    assert lcus_command(1, True) == ON_1
    assert lcus_command(1, False) == OFF_1
    assert lcus_command(2, True) == bytes.fromhex("A0 02 01 A3")
    assert lcus_command(4, False) == bytes.fromhex("A0 04 00 A4")
    # The checksum wraps modulo 256.
    assert lcus_command(0x60, True) == bytes.fromhex("A0 60 01 01")
    assert lcus_command(0xFF, False) == bytes.fromhex("A0 FF 00 9F")


@pytest.mark.parametrize("channel", [0, 256, -1])
def test_lcus_channel_out_of_range(channel: int) -> None:
    with pytest.raises(ValueError, match="channel"):
        lcus_command(channel, True)


def test_connect_releases_relay(relay: GateRelay, pty_device: PtyDevice) -> None:
    assert relay.connect()
    assert pty_device.read_exact(4) == OFF_1
    assert not relay.is_open


def test_pulse_on_then_off(relay: GateRelay, pty_device: PtyDevice) -> None:
    relay.connect()
    assert pty_device.read_exact(4) == OFF_1
    relay.open(0.1)
    assert pty_device.read_exact(4) == ON_1
    assert pty_device.read_exact(4) == OFF_1
    assert wait_until(lambda: not relay.is_open)


def test_rearm_extends_and_never_shortens(relay: GateRelay, pty_device: PtyDevice) -> None:
    relay.connect()
    pty_device.read_exact(4)
    relay.open(30)
    first = relay.open_until
    assert first is not None
    relay.open(0.05)
    assert relay.open_until == first
    relay.open(60)
    extended = relay.open_until
    assert extended is not None and extended > first
    # Every open() writes "on" again, so an unplugged board is noticed at once.
    assert pty_device.read_exact(12) == ON_1 * 3
    relay.shut()
    assert pty_device.read_exact(4) == OFF_1
    assert not relay.is_open


def test_other_channel(pty_device: PtyDevice) -> None:
    gate = GateRelay(str(pty_device.path), channel=2)
    try:
        gate.connect()
        assert pty_device.read_exact(4) == bytes.fromhex("A0 02 00 A2")
        gate.open(30)
        assert pty_device.read_exact(4) == bytes.fromhex("A0 02 01 A3")
    finally:
        gate.close()
    assert pty_device.read_exact(4) == bytes.fromhex("A0 02 00 A2")


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_pulse_length_must_be_positive(relay: GateRelay, seconds: float) -> None:
    relay.connect()
    with pytest.raises(ValueError, match="pulse length"):
        relay.open(seconds)


def test_unplugged_command_raises_then_reconnects(relay: GateRelay, pty_device: PtyDevice) -> None:
    relay.connect()
    assert pty_device.read_exact(4) == OFF_1
    relay.open(30)
    assert pty_device.read_exact(4) == ON_1

    pty_device.unplug()
    with pytest.raises(PeripheralUnavailable, match="link lost"):
        relay.open(30)
    assert not relay.is_open
    assert not relay.connected

    pty_device.plug()
    assert relay.wait_connected(WAIT)
    # The board came back without power to its relay; the daemon confirms "released".
    assert pty_device.read_exact(4) == OFF_1
    relay.open(30)
    assert pty_device.read_exact(4) == ON_1
    relay.close()
    assert pty_device.read_exact(4) == OFF_1


def test_replug_between_commands_is_transparent(relay: GateRelay, pty_device: PtyDevice) -> None:
    relay.connect()
    assert pty_device.read_exact(4) == OFF_1
    # Unplugged and plugged back while idle: the link only finds out on the next write,
    # reopens the new device at the same path and replays the command there.
    pty_device.unplug()
    pty_device.plug()
    relay.open(0.1)
    assert pty_device.read_exact(4) == ON_1
    assert pty_device.read_exact(4) == OFF_1


def test_absent_at_start_then_plugged(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "ttyLATE")
    gate = GateRelay(str(device.path), backoff_initial=0.02, backoff_max=0.1)
    try:
        assert not gate.connect()
        with pytest.raises(PeripheralUnavailable, match="cannot open"):
            gate.open(1)
        device.plug()
        assert gate.wait_connected(WAIT)
        assert device.read_exact(4) == OFF_1
    finally:
        gate.close()
        device.unplug()


def test_second_owner_is_refused(relay: GateRelay, pty_device: PtyDevice) -> None:
    relay.connect()
    pty_device.read_exact(4)
    rival = GateRelay(str(pty_device.path), backoff_initial=0.02, backoff_max=0.1)
    try:
        assert not rival.connect()
        with pytest.raises(PeripheralUnavailable, match="lock"):
            rival.open(1)
    finally:
        rival.close()


def test_closed_relay_refuses_commands(relay: GateRelay, pty_device: PtyDevice) -> None:
    relay.connect()
    pty_device.read_exact(4)
    relay.open(30)
    assert pty_device.read_exact(4) == ON_1
    relay.close()
    assert pty_device.read_exact(4) == OFF_1
    with pytest.raises(PeripheralUnavailable, match="closed"):
        relay.open(1)
