"""Serial peripherals of a terminal: the gate relay and the line display with buzzer.

Both sit on USB-serial adapters that get unplugged, re-plugged and renumbered, so both
share one reconnecting serial link (`link.SerialLink`) and one family of typed errors
(`errors.PeripheralError`).
"""
