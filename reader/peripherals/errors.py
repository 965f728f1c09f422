"""Typed failures of serial peripherals.

A gate that does not open after a paid tap, or a display that shows nothing, must be
visible to the daemon: every command either completes or raises one of these, so the
caller can react (show "gate fault", log, count) instead of a command vanishing.
"""

from __future__ import annotations


class PeripheralError(Exception):
    """Base of every failure a serial peripheral reports."""

    def __init__(self, peripheral: str, message: str) -> None:
        super().__init__(f"{peripheral}: {message}")
        self.peripheral = peripheral


class PeripheralUnavailable(PeripheralError):
    """The device is unplugged, cannot be opened, or the link broke; the command was not performed."""


class PeripheralTimeout(PeripheralError):
    """The device did not answer within the deadline; the command may or may not have taken effect."""


class PeripheralRejected(PeripheralError):
    """The device answered that it refused the command (an `ERR` answer)."""


class PeripheralProtocolError(PeripheralError):
    """The device answered something the protocol does not allow (wrong device, wrong speed, noise)."""
