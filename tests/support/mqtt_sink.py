"""A back-office consumer for MQTT: subscribes to the tap topics and deduplicates by tap id.

It uses a persistent session (clean start off, session expiry) at QoS 1, so taps the broker
accepted while the consumer was away, or across a broker restart, still reach it.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class TapSink:
    """Collects tap records from `topic`; `taps` holds one record per (terminal id, tap id)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        topic: str = "taps/#",
        client_id: str = "backoffice-sink",
    ) -> None:
        self.topic = topic
        self.taps: dict[tuple[str, str], dict[str, object]] = {}
        self.received = 0
        self.malformed = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self._host, self._port = host, port

    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe, and wait for SUBACK."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self._client.connect(self._host, self._port, keepalive=10, clean_start=False, properties=props)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError("the sink did not get its SUBACK")

    def stop(self) -> None:
        """Disconnect (the session stays on the broker until it expires)."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, _codes: object, _p: object) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            record = json.loads(message.payload)
            key = (str(record["terminal_id"]), str(record["tap_id"]))
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.malformed += 1
            return
        with self._changed:
            self.received += 1
            self.taps.setdefault(key, record)
            self._changed.notify_all()

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first per tap id."""
        with self._lock:
            return self.received - len(self.taps)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until `count` distinct taps arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.taps) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True
