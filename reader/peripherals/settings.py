"""Settings of the serial peripherals, composed into the `[readers.serial]` section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

LCUS_BAUDRATE = 9600
"""The LCUS relay boards' fixed rate."""
DISPLAY_BAUDRATE = 115200
"""The line display's default rate."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelaySettings(_Settings):
    """An LCUS USB relay that opens the gate (a stable /dev/serial/by-id/... path is best)."""

    device: str
    channel: int = Field(1, ge=1, le=8)
    baudrate: int = LCUS_BAUDRATE


class DisplaySettings(_Settings):
    """The line display with its buzzer."""

    device: str
    rows: int = Field(2, ge=1, le=8)
    columns: int = Field(20, ge=8, le=80)
    baudrate: int = DISPLAY_BAUDRATE
    answer_timeout: float = Field(0.5, gt=0, le=5)
