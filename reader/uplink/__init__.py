"""Getting every recorded tap to the back office: the durable queue, the uplinks, the hotlist.

The daemon builds one TapQueue, enqueues each tap record before accepting the tap, starts
the uplink chosen by the configuration (`create_uplink`) and, if a hotlist source is
configured, its sync worker (`create_hotlist_sync`). Status figures come from
`TapQueue.status()` and each worker's `stats()`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): `sscard queue status` and the crash-test child
# need the queue only, not httpx, paho-mqtt and the hotlist.
_EXPORTS = {
    "BackoffSettings": "settings",
    "DiskFullError": "errors",
    "DuplicateTapError": "errors",
    "Hotlist": "hotlist",
    "HotlistFetchError": "errors",
    "HotlistFormatError": "errors",
    "HotlistSettings": "settings",
    "HotlistStore": "hotlist",
    "HttpHotlistSync": "hotlist_sync",
    "HttpUplink": "http_uplink",
    "HttpUplinkSettings": "settings",
    "MqttHotlistSync": "hotlist_sync",
    "MqttUplink": "mqtt_uplink",
    "MqttUplinkSettings": "settings",
    "OutOfServiceError": "errors",
    "PoisonedTap": "queue",
    "QueueCorruptError": "errors",
    "QueueFullError": "errors",
    "QueueMissingError": "errors",
    "QueueSettings": "settings",
    "QueueStatus": "queue",
    "QueueStorageError": "errors",
    "QueuedTap": "queue",
    "TapQueue": "queue",
    "TapRecordError": "errors",
    "TlsSettings": "settings",
    "UplinkConfigError": "errors",
    "UplinkError": "errors",
    "UplinkStats": "worker",
    "UplinkWorker": "worker",
    "encode_hotlist": "hotlist",
    "token_digest": "hotlist",
}

if TYPE_CHECKING:
    from reader.uplink.hotlist import HotlistStore
    from reader.uplink.parameters import ParameterStore
    from reader.uplink.queue import TapQueue
    from reader.uplink.settings import HotlistSettings, HttpUplinkSettings, MqttUplinkSettings, ParameterSettings
    from reader.uplink.worker import UplinkWorker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reader.uplink' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"reader.uplink.{module}"), name)
    globals()[name] = value
    return value


def create_uplink(
    queue: TapQueue,
    *,
    http: HttpUplinkSettings,
    mqtt: MqttUplinkSettings,
    terminal_id: str,
) -> UplinkWorker | None:
    """The uplink the settings enable (not started); None if neither is enabled.

    One queue feeds one uplink: with two, each would delete what the other has not sent.
    """
    from reader.uplink.errors import UplinkConfigError
    from reader.uplink.http_uplink import HttpUplink
    from reader.uplink.mqtt_uplink import MqttUplink

    if http.enabled and mqtt.enabled:
        raise UplinkConfigError("enable either the HTTP or the MQTT uplink, not both")
    if http.enabled:
        return HttpUplink(queue, http)
    if mqtt.enabled:
        return MqttUplink(queue, mqtt, terminal_id=terminal_id)
    return None


def create_hotlist_sync(
    store: HotlistStore,
    settings: HotlistSettings,
    *,
    mqtt: MqttUplinkSettings,
    terminal_id: str,
) -> UplinkWorker | None:
    """The hotlist sync worker for the configured source (not started); None for source 'none'."""
    from reader.uplink.hotlist_sync import HttpHotlistSync, MqttHotlistSync

    if settings.source == "http":
        return HttpHotlistSync(store, settings)
    if settings.source == "mqtt":
        return MqttHotlistSync(store, settings, mqtt, terminal_id=terminal_id)
    return None


def create_parameter_sync(
    store: ParameterStore,
    settings: ParameterSettings,
    *,
    mqtt: MqttUplinkSettings,
    terminal_id: str,
) -> UplinkWorker | None:
    """The parameter sync worker for the configured source (not started); None for source 'none'."""
    from reader.uplink.parameters import HttpParameterSync, MqttParameterSync

    if settings.source == "http":
        return HttpParameterSync(store, settings)
    if settings.source == "mqtt":
        return MqttParameterSync(store, settings, mqtt, terminal_id=terminal_id)
    return None


__all__ = [
    "BackoffSettings",
    "DiskFullError",
    "DuplicateTapError",
    "Hotlist",
    "HotlistFetchError",
    "HotlistFormatError",
    "HotlistSettings",
    "HotlistStore",
    "HttpHotlistSync",
    "HttpUplink",
    "HttpUplinkSettings",
    "MqttHotlistSync",
    "MqttUplink",
    "MqttUplinkSettings",
    "OutOfServiceError",
    "PoisonedTap",
    "QueueCorruptError",
    "QueueFullError",
    "QueueMissingError",
    "QueueSettings",
    "QueueStatus",
    "QueueStorageError",
    "QueuedTap",
    "TapQueue",
    "TapRecordError",
    "TlsSettings",
    "UplinkConfigError",
    "UplinkError",
    "UplinkStats",
    "UplinkWorker",
    "create_hotlist_sync",
    "create_parameter_sync",
    "create_uplink",
    "encode_hotlist",
    "token_digest",
]
