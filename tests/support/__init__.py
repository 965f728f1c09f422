"""Real infrastructure for tests and benchmarks: a Mosquitto broker, a back-office HTTP server,
test certificates and an MQTT consumer. Plain classes, usable without pytest."""

from pathlib import Path

VPCD = str(Path(__file__).with_name("vpcd-readers.toml"))
"""`--config` for `sscard read` and `sscard readers` on the test bench (the vpcd slots)."""
