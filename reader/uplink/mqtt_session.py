"""Opening one MQTT 5 connection with paho-mqtt 2.x, shared by the tap uplink and the hotlist sync.

The caller drives the network loop itself (`client.loop()` in its own thread), so nothing
here starts paho's background thread. A fresh Client is made for every connection: paho
keeps unacknowledged publishes only in memory, and the queue, not paho, is what resends
after a reconnect, so no stale paho state may survive a disconnect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from reader.uplink.errors import UplinkConfigError
from reader.uplink.keys import read_key_file
from reader.uplink.settings import MqttUplinkSettings
from reader.uplink.tls import client_context


class MqttConnectError(Exception):
    """The broker could not be reached or refused the connection (CONNACK failure code)."""


@dataclass(frozen=True)
class Session:
    """A connected client and what the broker said in CONNACK."""

    client: mqtt.Client
    session_present: bool
    receive_maximum: int | None


def new_client(settings: MqttUplinkSettings, client_id: str) -> mqtt.Client:
    """A configured, unconnected MQTT 5 client."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect_timeout = settings.connect_timeout_s
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(settings.inflight)
    if settings.username is not None:
        password = None
        if settings.password_file is not None:
            password = read_key_file(settings.password_file).decode("utf-8")
        client.username_pw_set(settings.username, password)
    elif settings.password_file is not None:
        raise UplinkConfigError("MQTT password_file given without username")
    if settings.tls is not None:
        client.tls_set_context(client_context(settings.tls))
        if not settings.tls.verify:
            client.tls_insecure_set(True)
    return client


def open_session(client: mqtt.Client, settings: MqttUplinkSettings) -> Session:
    """Connect with clean start off and a session expiry, and wait for CONNACK."""
    answer: dict[str, object] = {}

    def on_connect(
        _client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        answer["reason"] = reason
        answer["session_present"] = flags.session_present
        answer["receive_maximum"] = getattr(props, "ReceiveMaximum", None)

    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = settings.session_expiry_s
    try:
        client.connect(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_s,
            clean_start=False,
            properties=properties,
        )
    except OSError as exc:  # refused, unreachable, TLS handshake or verification failure
        raise MqttConnectError(f"connect to {settings.host}:{settings.port}: {exc}") from exc
    deadline = time.monotonic() + settings.connect_timeout_s
    while "reason" not in answer:
        if time.monotonic() > deadline:
            client.disconnect()
            raise MqttConnectError("no CONNACK in time")
        rc = client.loop(0.1)
        if rc != mqtt.MQTT_ERR_SUCCESS and "reason" not in answer:
            raise MqttConnectError(f"connection lost before CONNACK: {mqtt.error_string(rc)}")
    reason = answer["reason"]
    assert isinstance(reason, ReasonCode)
    if reason.is_failure:
        client.disconnect()
        raise MqttConnectError(f"CONNACK 0x{reason.value:02x} {reason}")
    receive_maximum = answer["receive_maximum"]
    return Session(
        client=client,
        session_present=bool(answer["session_present"]),
        receive_maximum=receive_maximum if isinstance(receive_maximum, int) else None,
    )
