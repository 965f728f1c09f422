"""The MQTT uplink: each queued tap published at QoS 1 on its terminal's topic, MQTT 5 only.

A row leaves the queue only after a PUBACK whose reason code is a success. With MQTT 5 a
broker that drops a publish says so (0x87 Not authorized for an ACL refusal); with 3.1.1
it would acknowledge and drop, which is why 3.1.1 is not offered.

- Permanent refusals (0x87, 0x90 topic name invalid, 0x99 payload format invalid, 0x83
  implementation specific) set the tap aside as poison; other failure codes (0x97 quota
  exceeded, 0x80 unspecified) are retried after a backoff.
- At most `inflight` publishes are unacknowledged at once (also capped by the broker's
  Receive Maximum, which paho itself ignores).
- On any disconnect the in-flight publishes are forgotten, a new connection is made after a
  backoff, and the rows still queued are published again: the queue, not paho's memory,
  is what survives. A PUBACK lost with the connection means a duplicate upstream, absorbed
  by the tap id.
- A PUBACK later than `ack_timeout_s` drops the connection, so a broker that stops
  answering cannot hold rows forever.

Where a drain's time goes, and why the loop is shaped as it is (bench/mqtt_drain.py
compares it with a bare paho publisher at the same window):
- The uplink keeps the window itself, so paho's own window is switched off: with one set,
  paho scans every message in flight after each PUBACK, a cost that grows with the window.
- Rows are read after a cursor (the highest sequence number published on this
  connection), so the rows in flight are never read again. When nothing is in flight or
  waiting to be deleted, the read starts from the oldest row again: that resends what a
  transient refusal left behind and picks up rows an operator put back from the poison
  table.
- Acknowledged rows are deleted in batches (up to `_ACK_BATCH` rows, at the latest
  `_ACK_DELAY_S` after the first PUBACK of the batch, at once when nothing is left in flight),
  each batch one DELETE statement: the per-row and per-transaction cost of SQLite is the
  larger part of what the uplink adds to paho's own. A row still leaves the queue only after
  its PUBACK; a crash before the delete commits means the row is sent again, never lost.
- After each network loop the window is refilled before the deletes are written, so the
  broker works on the next publishes while SQLite commits.
"""

from __future__ import annotations

import random
import sqlite3
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from reader.backoff import Backoff
from reader.uplink.errors import UplinkConfigError
from reader.uplink.mqtt_session import MqttConnectError, Session, new_client, open_session
from reader.uplink.queue import QueuedTap, TapQueue
from reader.uplink.settings import MqttUplinkSettings
from reader.uplink.worker import UplinkWorker

PERMANENT_REFUSALS = frozenset({0x83, 0x87, 0x90, 0x99})
_ACK_BATCH = 256
_ACK_DELAY_S = 0.05


def topic_for(template: str, terminal_id: str) -> str:
    """The topic of one terminal's taps."""
    return template.replace("{terminal_id}", terminal_id)


class MqttUplink(UplinkWorker):
    """Drains a TapQueue to an MQTT 5 broker."""

    def __init__(
        self,
        queue: TapQueue,
        settings: MqttUplinkSettings,
        *,
        terminal_id: str,
        rng: random.Random | None = None,
        name: str = "mqtt_uplink",
    ) -> None:
        stall = settings.connect_timeout_s * 2 + 30.0
        super().__init__(name, stall_after_s=stall)
        if "#" in settings.topic or "+" in settings.topic:
            raise UplinkConfigError(f"publish topic may not contain wildcards: {settings.topic!r}")
        self._queue = queue
        self._settings = settings
        self._client_id = settings.client_id or f"sscard-{terminal_id}"
        self._backoff = Backoff.of(settings.reconnect, rng)
        self._session: Session | None = None
        self._window = settings.inflight
        # mid -> (queue row, time sent); filled by publish, emptied by PUBACKs or a disconnect.
        self._inflight: dict[int, tuple[QueuedTap, float]] = {}
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []
        self._transient: list[tuple[int, str]] = []
        self._pause_until = 0.0
        # Highest queue sequence number published on this connection (0: read from the oldest).
        self._cursor = 0
        # A transient refusal left rows below the cursor: resend from the oldest once settled.
        self._rewind = False
        self._topics: dict[str, str] = {}
        # When the oldest PUBACK not yet applied to the queue came.
        self._acked_at = 0.0
        # Validate the credentials and TLS files now rather than on the first connect.
        new_client(settings, self._client_id)

    def _wake(self) -> None:
        self._queue.wake()

    def _connected(self) -> bool | None:
        return self._session is not None

    def _in_flight(self) -> int:
        return len(self._inflight)

    # -- loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stopping:
                self._beat()
                if self._session is None and not self._connect():
                    continue
                try:
                    self._step()
                except sqlite3.Error as exc:
                    self._note_error(f"queue: {exc}")
                    self._log.error("queue_io_failed", error=str(exc))
                    self._sleep(self._backoff.next_delay())
        finally:
            self._finish_inflight()
            self._close(graceful=True)

    def _finish_inflight(self, timeout: float = 2.0) -> None:
        """On stop, give outstanding PUBACKs a moment so their rows are not sent twice."""
        deadline = time.monotonic() + timeout
        while self._session is not None and self._inflight and time.monotonic() < deadline:
            if self._session.client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
            try:
                self._settle(force=True)
            except sqlite3.Error as exc:
                self._log.error("queue_io_failed", error=str(exc))
                break

    def _connect(self) -> bool:
        client = new_client(self._settings, self._client_id)
        # This class keeps the window (`_window`); paho's own would only cost a scan per PUBACK.
        client.max_inflight_messages_set(0)
        client.on_publish = self._on_publish
        try:
            session = open_session(client, self._settings)
        except MqttConnectError as exc:
            delay = self._backoff.next_delay()
            self._note_error(str(exc))
            self._log.warning("mqtt_connect_failed", error=str(exc), retry_in_s=round(delay, 3))
            self._sleep(delay)
            return False
        self._session = session
        self._cursor = 0
        self._rewind = False
        self._window = min(self._settings.inflight, session.receive_maximum or self._settings.inflight)
        self._log.info("mqtt_connected", session_present=session.session_present, window=self._window)
        return True

    def _step(self) -> None:
        session = self._session
        assert session is not None
        client = session.client
        published = self._publish_more(client)
        if self._session is None:
            return
        idle = not self._inflight and not published
        if idle and time.monotonic() < self._pause_until:
            rc = client.loop(min(0.5, self._pause_until - time.monotonic()))
        elif idle:
            # Nothing to send: wait for a tap, then let paho answer pings.
            self._queue.wait_for_taps(self._settings.idle_poll_s)
            rc = client.loop(0)
        else:
            rc = client.loop(0.05)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self._lost(f"connection lost: {mqtt.error_string(rc)}")
            return
        # Refill the window first: the broker handles these while the deletes commit.
        self._publish_more(client)
        if self._session is None:
            return
        self._settle()
        if self._inflight:
            # Publish order is insertion order, and PUBACKs only remove: the first is the oldest.
            _, oldest = next(iter(self._inflight.values()))
            if time.monotonic() - oldest > self._settings.ack_timeout_s:
                self._lost(f"no PUBACK within {self._settings.ack_timeout_s} s")

    def _publish_more(self, client: mqtt.Client) -> int:
        room = self._window - len(self._inflight)
        if room <= 0 or time.monotonic() < self._pause_until:
            return 0
        if not self._inflight and not self._unsettled():
            # Nothing outstanding: start from the oldest row again (see the module docstring).
            self._cursor = 0
            self._rewind = False
        elif self._rewind:
            return 0
        taps = self._queue.batch_after(self._cursor, room)
        sent_at = time.monotonic()
        for tap in taps:
            topic = self._topics.get(tap.terminal_id)
            if topic is None:
                topic = self._topics[tap.terminal_id] = topic_for(self._settings.topic, tap.terminal_id)
            info = client.publish(topic, tap.body.encode("utf-8"), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._lost(f"publish failed: {mqtt.error_string(info.rc)}")
                return 0
            self._inflight[info.mid] = (tap, sent_at)
            self._cursor = tap.seq
        return len(taps)

    def _on_publish(
        self, _client: mqtt.Client, _userdata: object, mid: int, reason: ReasonCode, _props: Properties
    ) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        tap, _ = entry
        if not reason.is_failure:
            if not self._acked:
                self._acked_at = time.monotonic()
            self._acked.append(tap.seq)
        elif reason.value in PERMANENT_REFUSALS:
            self._refused.append((tap.seq, f"puback 0x{reason.value:02x} {reason}"))
        else:
            self._transient.append((tap.seq, f"puback 0x{reason.value:02x} {reason}"))

    def _unsettled(self) -> bool:
        """PUBACKs whose rows are not yet deleted, set aside or counted."""
        return bool(self._acked or self._refused or self._transient)

    def _settle(self, force: bool = False) -> None:
        """Apply the PUBACKs collected by the last loop call to the queue."""
        if self._acked and (
            force
            or not self._inflight
            or len(self._acked) >= _ACK_BATCH
            or time.monotonic() - self._acked_at >= _ACK_DELAY_S
        ):
            acked, self._acked = self._acked, []
            self._queue.ack(acked)
            self._note_delivered(len(acked))
            self._backoff.reset()
        if self._refused:
            refused, self._refused = self._refused, []
            for seq, reason in refused:
                self._note_set_aside(self._queue.set_aside([seq], reason))
                self._note_error(reason)
        if self._transient:
            transient, self._transient = self._transient, []
            reason = transient[0][1]
            self._queue.record_failure([seq for seq, _ in transient], reason)
            self._note_error(reason)
            delay = self._backoff.next_delay()
            self._log.warning("mqtt_publish_rejected", taps=len(transient), reason=reason, retry_in_s=delay)
            # The rows are still queued; publishing pauses (the connection keeps being served),
            # then resumes from the oldest row once everything in flight is settled.
            self._pause_until = time.monotonic() + delay
            self._rewind = True

    def _lost(self, why: str) -> None:
        self._note_error(why)
        self._log.warning("mqtt_disconnected", reason=why, in_flight=len(self._inflight))
        # PUBACKs that came before the loss are real: delete those rows now, not after the backoff.
        self._settle(force=True)
        self._close(graceful=False)
        self._sleep(self._backoff.next_delay())

    def _close(self, graceful: bool) -> None:
        session, self._session = self._session, None
        self._inflight.clear()
        if session is None:
            return
        if graceful:
            session.client.disconnect()
            session.client.loop(0.1)
        else:
            # Drop the socket without DISCONNECT; the broker keeps the session (expiry).
            sock = session.client.socket()
            if sock is not None:
                sock.close()
