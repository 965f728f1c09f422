"""Real infrastructure for tests and benchmarks: a Mosquitto broker, a back-office HTTP server,
test certificates and an MQTT consumer. Plain classes, usable without pytest."""
