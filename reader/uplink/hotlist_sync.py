"""Keeping the hotlist fresh: polled over HTTP with ETag, or taken from MQTT topics.

Either way a received document must carry the back office's Ed25519 signature
(`[hotlist] public_key`) and is checked in full before it replaces the list in force
(HotlistStore.receive); a bad, unsigned, truncated or out-of-sequence document is logged and
the old list stays.

HTTP: each GET sends `If-None-Match` with the entity tag of the list in force and
`X-Hotlist-Version` with its version, so the back office may answer 304, a delta from that
version, or a full list. After a document that does not fit the list in force (a delta for
another version) the next GET sends neither and so asks for a full list. The body is
streamed to an unnamed file beside the list, not held in memory.

MQTT: the full list is the retained message of `mqtt_topic`; deltas are published, not
retained, on `<mqtt_topic>/delta` and wait in the persistent session while the terminal is
away. A delta that arrives before the list it applies to is kept (a few) and applied once
that list is in force; a retained full list older than the list in force is ignored.
"""

from __future__ import annotations

import mmap
import random
import tempfile
from typing import TYPE_CHECKING

import httpx
import paho.mqtt.client as mqtt

from reader.backoff import Backoff
from reader.uplink.errors import HotlistFetchError, HotlistFormatError, HotlistVersionError, UplinkConfigError
from reader.uplink.hotlist import KIND_DELTA, HotlistStore, peek, public_key
from reader.uplink.mqtt_session import MqttConnectError, Session, new_client, open_session
from reader.uplink.settings import HotlistSettings, MqttUplinkSettings
from reader.uplink.tls import client_context
from reader.uplink.worker import UplinkWorker

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VERSION_HEADER = "X-Hotlist-Version"
DELTA_SUFFIX = "/delta"
_PARKED_DELTAS = 16


def _verify_key(settings: HotlistSettings) -> Ed25519PublicKey:
    """The configured back-office key; a source without one is a configuration error."""
    raw = settings.public_key_bytes()
    if raw is None:
        raise UplinkConfigError("a hotlist source needs [hotlist] public_key")
    return public_key(raw)


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
        self._key = _verify_key(settings)
        self._want_full = False
        self._backoff = Backoff.of(settings.backoff, rng)
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
        etag, number = self._store.etag, self._store.number
        if not self._want_full:
            if etag is not None:
                headers["If-None-Match"] = etag
            if number is not None:
                headers[VERSION_HEADER] = str(number)
        with tempfile.TemporaryFile(dir=self._store.path.parent) as body:
            try:
                with self._client.stream("GET", self._url, headers=headers) as response:
                    if response.status_code == 304:
                        return False
                    if response.status_code != 200:
                        raise HotlistFetchError(f"GET {self._url}: {response.status_code} {response.reason_phrase}")
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > self._settings.max_bytes:
                            raise HotlistFetchError(f"hotlist larger than {self._settings.max_bytes} bytes")
                        body.write(chunk)
                    new_etag = response.headers.get("ETag")
            except httpx.HTTPError as exc:
                raise HotlistFetchError(f"GET {self._url}: {type(exc).__name__}: {exc}") from exc
            body.flush()
            if size == 0:
                raise HotlistFormatError("empty hotlist document")
            return self._install(mmap.mmap(body.fileno(), size, access=mmap.ACCESS_READ), new_etag)

    def _install(self, document: mmap.mmap, etag: str | None) -> bool:
        """Verify and apply a downloaded document (mapped, not copied)."""
        before = self._store.version
        try:
            installed = self._store.receive(document, self._key, etag)
        except HotlistVersionError as exc:
            if exc.stale:
                self._log.warning("hotlist_stale_document", error=str(exc), version=before)
                return False
            self._want_full = True
            raise
        # The mapping is not closed here: on an error the traceback still holds views of it;
        # it goes with the last reference, and its unnamed file with it.
        self._want_full = False
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
        self._delta_topic = self._topic + DELTA_SUFFIX
        self._key = _verify_key(settings)
        self._parked: dict[int, bytes] = {}
        self._client_id = (broker.client_id or f"sscard-{terminal_id}") + "-hotlist"
        self._backoff = Backoff.of(broker.reconnect, rng)
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
        result, _mid = client.subscribe([(self._topic, 1), (self._delta_topic, 1)])
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
        document = bytes(message.payload)
        try:
            self._store.receive(document, self._key)
        except HotlistVersionError as exc:
            if exc.stale:
                self._log.info("hotlist_stale_document", topic=message.topic, error=str(exc))
                return
            if not self._park(document):
                self._note_error(f"hotlist message refused: {exc}")
                self._log.error("hotlist_message_refused", error=str(exc))
            return
        except HotlistFormatError as exc:
            self._note_error(f"bad hotlist message: {exc}")
            self._log.error("hotlist_message_refused", error=str(exc))
            return
        self._apply_parked()
        if self._store.version != before:
            self._note_delivered(1)

    def _park(self, document: bytes) -> bool:
        """Keep a signed delta for a version not yet in force; False if it can never apply."""
        header = peek(document)
        if header is None or header[0] != KIND_DELTA or header[2] <= (self._store.number or 0):
            return False
        if len(self._parked) >= _PARKED_DELTAS:
            self._parked.pop(min(self._parked))
        self._parked[header[2]] = document
        self._log.info("hotlist_delta_parked", base=header[2], version=header[1])
        return True

    def _apply_parked(self) -> None:
        """Apply kept deltas that now fit, in sequence; drop those left behind."""
        while (number := self._store.number) is not None and number in self._parked:
            document = self._parked.pop(number)
            try:
                self._store.receive(document, self._key)
            except HotlistFormatError as exc:
                self._note_error(f"kept hotlist delta refused: {exc}")
                self._log.error("hotlist_message_refused", error=str(exc))
                break
        number = self._store.number or 0
        for base in [b for b in self._parked if b < number]:
            del self._parked[base]
