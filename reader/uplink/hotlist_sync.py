"""Keeping the hotlist fresh: polled over HTTP with ETag, or taken from a retained MQTT topic.

Either way a received document is checked in full before it replaces the list in force
(HotlistStore.install); a bad or truncated download is logged and the old list stays.
"""

from __future__ import annotations

import random

import httpx
import paho.mqtt.client as mqtt

from reader.uplink.backoff import Backoff
from reader.uplink.errors import HotlistFetchError, HotlistFormatError
from reader.uplink.hotlist import HotlistStore
from reader.uplink.mqtt_session import MqttConnectError, Session, new_client, open_session
from reader.uplink.settings import HotlistSettings, MqttUplinkSettings
from reader.uplink.tls import client_context
from reader.uplink.worker import UplinkWorker


class HttpHotlistSync(UplinkWorker):
    """Polls `http_url` every `poll_interval_s` with If-None-Match; 304 means nothing changed."""

    def __init__(
        self,
        store: HotlistStore,
        settings: HotlistSettings,
        *,
        rng: random.Random | None = None,
        name: str = "hotlist_http",
    ) -> None:
        super().__init__(name, stall_after_s=settings.connect_timeout_s + settings.read_timeout_s + 30.0)
        if not settings.http_url:
            raise HotlistFetchError("hotlist http_url is not set")
        self._url = settings.http_url
        self._store = store
        self._settings = settings
        self._backoff = Backoff(settings.backoff, rng)
        verify = client_context(settings.tls) if self._url.startswith("https:") else False  # no TLS on http
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.connect_timeout_s,
                pool=settings.connect_timeout_s,
            ),
            verify=verify,
        )

    def _run(self) -> None:
        try:
            while not self.stopping:
                self._beat()
                try:
                    changed = self.fetch_once()
                except (HotlistFetchError, HotlistFormatError) as exc:
                    delay = self._backoff.next_delay()
                    self._note_error(str(exc))
                    self._log.warning("hotlist_fetch_failed", error=str(exc), retry_in_s=round(delay, 3))
                    self._sleep(delay)
                    continue
                self._backoff.reset()
                if changed:
                    self._note_delivered(1)
                self._sleep(self._settings.poll_interval_s)
        finally:
            self._client.close()

    def fetch_once(self) -> bool:
        """One conditional GET; True when a new document was installed."""
        headers = {"Accept": "application/octet-stream"}
        etag = self._store.etag
        if etag is not None:
            headers["If-None-Match"] = etag
        try:
            with self._client.stream("GET", self._url, headers=headers) as response:
                if response.status_code == 304:
                    return False
                if response.status_code != 200:
                    raise HotlistFetchError(f"GET {self._url}: {response.status_code} {response.reason_phrase}")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self._settings.max_bytes:
                        raise HotlistFetchError(f"hotlist larger than {self._settings.max_bytes} bytes")
                    chunks.append(chunk)
                new_etag = response.headers.get("ETag")
        except httpx.HTTPError as exc:
            raise HotlistFetchError(f"GET {self._url}: {type(exc).__name__}: {exc}") from exc
        before = self._store.version
        installed = self._store.install(b"".join(chunks), etag=new_etag)
        return installed.version != before


class MqttHotlistSync(UplinkWorker):
    """Subscribes (QoS 1, persistent session) to the retained hotlist topic and installs what arrives."""

    def __init__(
        self,
        store: HotlistStore,
        settings: HotlistSettings,
        broker: MqttUplinkSettings,
        *,
        terminal_id: str,
        rng: random.Random | None = None,
        name: str = "hotlist_mqtt",
    ) -> None:
        super().__init__(name, stall_after_s=broker.connect_timeout_s * 2 + 30.0)
        self._store = store
        self._settings = settings
        self._broker = broker
        self._topic = settings.mqtt_topic.replace("{terminal_id}", terminal_id)
        self._client_id = (broker.client_id or f"sscard-{terminal_id}") + "-hotlist"
        self._backoff = Backoff(broker.reconnect, rng)
        self._session: Session | None = None
        if broker.tls is not None:
            client_context(broker.tls)

    def _connected(self) -> bool | None:
        return self._session is not None

    def _run(self) -> None:
        try:
            while not self.stopping:
                self._beat()
                if self._session is None:
                    self._connect()
                    continue
                rc = self._session.client.loop(0.5)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    self._note_error(f"connection lost: {mqtt.error_string(rc)}")
                    self._log.warning("hotlist_mqtt_disconnected", reason=mqtt.error_string(rc))
                    self._session = None
                    self._sleep(self._backoff.next_delay())
        finally:
            if self._session is not None:
                self._session.client.disconnect()
                self._session = None

    def _connect(self) -> None:
        client = new_client(self._broker, self._client_id)
        client.on_message = self._on_message
        try:
            session = open_session(client, self._broker)
        except MqttConnectError as exc:
            self._note_error(str(exc))
            self._sleep(self._backoff.next_delay())
            return
        result, _mid = client.subscribe(self._topic, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._note_error(f"subscribe failed: {mqtt.error_string(result)}")
            client.disconnect()
            self._sleep(self._backoff.next_delay())
            return
        self._session = session
        self._backoff.reset()
        self._log.info("hotlist_mqtt_subscribed", topic=self._topic, session_present=session.session_present)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return  # a cleared retained message: keep the list in force
        if len(message.payload) > self._settings.max_bytes:
            self._note_error(f"hotlist message larger than {self._settings.max_bytes} bytes")
            return
        before = self._store.version
        try:
            installed = self._store.install(bytes(message.payload))
        except HotlistFormatError as exc:
            self._note_error(f"bad hotlist message: {exc}")
            self._log.error("hotlist_message_refused", error=str(exc))
            return
        if installed.version != before:
            self._note_delivered(1)
