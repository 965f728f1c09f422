"""The Prometheus exposition of one terminal, built at scrape time.

Nothing is counted in the tap path for it: tap counts and durations come from `TapStats`,
which observes the records the pipeline publishes, and every gauge is read from the daemon's
own `status()` when the scraper asks. So a scrape shows the same figures as `/v1/status` and
`sscard queue status`, and the exposition cannot drift from them.

Series (all prefixed `sscard_`):
- `taps_total{kind,result,reason}`: committed tap records since start;
- `tap_duration_seconds{kind}`: histogram, card detected to record committed;
- `queue_depth`, `queue_bytes`, `queue_oldest_undelivered_age_seconds`, `queue_out_of_service`,
  `queue_poison`, `queue_delivered_total`: the durable queue;
- `uplink_up{uplink}`, `uplink_connected{uplink}`, `uplink_delivered_total{uplink}`,
  `uplink_delivery_rate_per_second{uplink}`, `uplink_failures_total{uplink}`, `uplink_in_flight{uplink}`;
- `reader_up{reader}`, `reader_state{reader,state}` (1 for the current state), `reader_failures_total{reader}`;
- `psam_up{reader}`: the PSAM channel is open;
- `hotlist_info{version}`, `hotlist_loaded`; `pending_debits`; `healthy`; `uptime_seconds`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from reader.backends.loop import LoopState
from reader.daemon.tap_stats import TapStats

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _bound(upper: float) -> str:
    """A bucket's `le` label as the exposition writes it."""
    return "+Inf" if math.isinf(upper) else repr(upper)


def _flag(value: object) -> float:
    return 1.0 if value else 0.0


class TerminalCollector(Collector):
    """One scrape: the tap figures and the status snapshot, turned into metric families."""

    def __init__(self, status: Mapping[str, Any], taps: TapStats) -> None:
        self._status = status
        self._taps = taps

    def collect(self) -> Iterator[Metric]:
        yield from self._tap_metrics()
        yield from self._queue_metrics(self._status.get("queue") or {})
        yield from self._uplink_metrics(self._status.get("uplinks") or {})
        yield from self._reader_metrics(self._status.get("readers") or [], self._status.get("psam"))
        yield from self._daemon_metrics()

    def _tap_metrics(self) -> Iterator[Metric]:
        taps = CounterMetricFamily(
            "sscard_taps",
            "Committed tap records by terminal kind, result and reason.",
            labels=["kind", "result", "reason"],
        )
        for (kind, result, reason), count in sorted(self._taps.counts().items()):
            taps.add_metric([kind, result, reason], count)
        yield taps
        durations = HistogramMetricFamily(
            "sscard_tap_duration_seconds", "Time from card detection to its committed record.", labels=["kind"]
        )
        for kind, (buckets, _count, total) in sorted(self._taps.durations().items()):
            durations.add_metric([kind], [(_bound(bound), count) for bound, count in buckets], total)
        yield durations

    def _queue_metrics(self, queue: Mapping[str, Any]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sscard_queue_depth", "Tap records waiting for the uplink.", value=queue.get("depth", 0)
        )
        yield GaugeMetricFamily("sscard_queue_bytes", "Bytes of the waiting tap records.", value=queue.get("bytes", 0))
        yield GaugeMetricFamily(
            "sscard_queue_oldest_undelivered_age_seconds",
            "Age of the oldest undelivered tap record (0 when the queue is empty): the uplink's lag.",
            value=queue.get("oldest_age_s") or 0.0,
        )
        yield GaugeMetricFamily(
            "sscard_queue_out_of_service",
            "1 while the queue refuses taps (full, disk full, unwritable).",
            value=_flag(queue.get("out_of_service")),
        )
        yield GaugeMetricFamily(
            "sscard_queue_poison", "Tap records set aside as undeliverable.", value=queue.get("poison", 0)
        )
        yield CounterMetricFamily(
            "sscard_queue_delivered",
            "Tap records the uplink delivered (kept in the queue file).",
            value=queue.get("delivered_total", 0),
        )

    def _uplink_metrics(self, uplinks: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily("sscard_uplink_up", "1 while the uplink worker runs.", labels=["uplink"])
        connected = GaugeMetricFamily(
            "sscard_uplink_connected", "1 while the uplink holds its connection (MQTT).", labels=["uplink"]
        )
        delivered = CounterMetricFamily(
            "sscard_uplink_delivered", "Tap records this worker delivered since start.", labels=["uplink"]
        )
        rate = GaugeMetricFamily(
            "sscard_uplink_delivery_rate_per_second", "Recent deliveries per second.", labels=["uplink"]
        )
        failures = CounterMetricFamily("sscard_uplink_failures", "Failed delivery attempts.", labels=["uplink"])
        in_flight = GaugeMetricFamily(
            "sscard_uplink_in_flight", "Tap records sent, not yet acknowledged.", labels=["uplink"]
        )
        for name, stats in sorted(uplinks.items()):
            up.add_metric([name], _flag(stats.get("alive")))
            if stats.get("connected") is not None:
                connected.add_metric([name], _flag(stats.get("connected")))
            delivered.add_metric([name], stats.get("delivered", 0))
            rate.add_metric([name], stats.get("delivery_rate_per_s", 0.0))
            failures.add_metric([name], stats.get("failures", 0))
            in_flight.add_metric([name], stats.get("in_flight", 0))
        yield from (up, connected, delivered, rate, failures, in_flight)

    def _reader_metrics(self, readers: list[Mapping[str, Any]], psam: Mapping[str, Any] | None) -> Iterator[Metric]:
        up = GaugeMetricFamily("sscard_reader_up", "1 while the reader's loop runs and beats.", labels=["reader"])
        state = GaugeMetricFamily(
            "sscard_reader_state", "1 for the state the reader's loop is in.", labels=["reader", "state"]
        )
        failures = CounterMetricFamily(
            "sscard_reader_failures", "Card sessions that failed in the reader (lost, timed out).", labels=["reader"]
        )
        for reader in readers:
            name = str(reader.get("reader"))
            up.add_metric([name], _flag(reader.get("alive")))
            for candidate in LoopState:
                state.add_metric([name, candidate.value], _flag(reader.get("state") == candidate.value))
            failures.add_metric([name], reader.get("failures", 0))
        psam_up = GaugeMetricFamily("sscard_psam_up", "1 while the PSAM channel is open.", labels=["reader"])
        if psam is not None:
            psam_up.add_metric([str(psam.get("reader"))], _flag(psam.get("open")))
        yield from (up, state, failures, psam_up)

    def _daemon_metrics(self) -> Iterator[Metric]:
        version = self._status.get("hotlist_version")
        hotlist = InfoMetricFamily("sscard_hotlist", "The hotlist version in force.", labels=["version"])
        if version:
            hotlist.add_metric([str(version)], {})
        yield hotlist
        yield GaugeMetricFamily("sscard_hotlist_loaded", "1 when a hotlist is loaded.", value=_flag(version))
        yield GaugeMetricFamily(
            "sscard_pending_debits", "Torn debits waiting for their card.", value=self._status.get("pending_debits", 0)
        )
        yield GaugeMetricFamily(
            "sscard_healthy", "1 while every worker is alive.", value=_flag(self._status.get("healthy"))
        )
        yield GaugeMetricFamily(
            "sscard_uptime_seconds", "Seconds since the daemon started.", value=self._status.get("uptime_s", 0.0)
        )


def render_metrics(status: Mapping[str, Any], taps: TapStats) -> bytes:
    """The text exposition of one scrape (a registry of its own: no process-wide state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TerminalCollector(status, taps))
    return generate_latest(registry)
