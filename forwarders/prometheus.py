"""Exposes the aggregates for scraping: an HTTP endpoint in the Prometheus text format, served
by ``prometheus-client``, so a statsd_exporter user can point Prometheus at pystatsd instead.

Each flush updates the exposed state: a counter's count is added to its cumulative
``<name>_total``; a gauge, a set's count and a trace count are gauges; a timer or histogram is
a summary (its ``_count`` and ``_sum`` cumulative, its quantiles those of the last interval),
or a histogram (cumulative ``_bucket`` counts) when ``histogram_buckets`` gives it buckets. A
series no flush has updated for ``expiry_seconds`` disappears. Names and tag keys are made
valid Prometheus names (any other character becomes ``_``); tags become labels."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from prometheus_client import start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from forwarders.aggregate import AggregateForwarder
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, Tags
from pystatsd.snapshot import Snapshot

_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_QUANTILE_KEY = re.compile(r"^p(\d+)(?:_(\d+))?$")


def metric_name(name: str) -> str:
    """A Prometheus metric name for a statsd name (``api.hits`` -> ``api_hits``)."""
    cleaned = _NAME_INVALID.sub("_", name)
    return "_" + cleaned if not cleaned or cleaned[0].isdigit() else cleaned


def label_name(key: str) -> str:
    cleaned = _LABEL_INVALID.sub("_", key)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return "tag" + cleaned if cleaned.startswith("__") else cleaned  # __ is Prometheus'


def _labels(tags: Tags) -> dict[str, str]:
    return {label_name(key): value for key, value in tags}


def _quantile(key: str) -> float | None:
    """``p99_9`` -> 0.999, ``p50`` -> 0.5; None for a statistic that is not a percentile."""
    found = _QUANTILE_KEY.match(key)
    if found is None:
        return None
    return round(float(f"{found.group(1)}.{found.group(2) or 0}") / 100, 9)


def _bucket_bound(key: str) -> float | None:
    """``le_0_005`` -> 0.005, ``le_m1`` -> -1.0; None for ``le_inf`` (the count) and for any
    other statistic (see ``histogram_buckets``)."""
    if not key.startswith("le_") or key == "le_inf":
        return None
    try:
        return float(key[3:].replace("m", "-").replace("_", "."))
    except ValueError:
        return None


class _Exposed:
    """One exposed series: its Prometheus type, values, and when a flush last updated it."""

    __slots__ = ("kind", "value", "count", "sum", "quantiles", "buckets", "seen")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value = 0.0
        self.count = 0.0
        self.sum = 0.0
        self.quantiles: dict[float, float] = {}
        self.buckets: dict[float, float] = {}  # le bound -> cumulative count since start
        self.seen = 0.0


class _Scrape(Collector):
    """What the registry asks on each scrape (a separate object: a forwarder's ``describe``
    means another thing than a collector's)."""

    def __init__(self, forwarder: PrometheusForwarder) -> None:
        self._forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        return self._forwarder.collect()


class PrometheusForwarder(AggregateForwarder):
    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "listen_address": {"type": "string", "default": "127.0.0.1",
                               "description": "Address the HTTP endpoint binds."},
            "listen_port": {"type": "integer", "minimum": 0, "maximum": 65535,
                            "default": 9102,
                            "description": "Port of the endpoint (`/metrics`); 9102 is "
                            "statsd_exporter's. 0 picks a free one (logged)."},
            "expiry_seconds": {"type": "number", "minimum": 0, "default": 300,
                               "description": "A series no flush has updated for this long "
                               "is no longer exposed (its counter starts again from 0 if it "
                               "comes back). 0 keeps every series."},
        },
    }
    LEVELS: ClassVar[tuple[str, ...]] = (*AggregateForwarder.LEVELS, "exposed_series")

    _server: Any = None

    def open(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, Tags], _Exposed] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Scrape(self))
        self._server, self._server_thread = start_http_server(
            self.config["listen_port"], self.config["listen_address"], self._registry)
        self.port = self._server.server_address[1]
        self.log.info("forwarder %s: Prometheus endpoint on http://%s:%d/metrics", self.name,
                      self.config["listen_address"], self.port)

    def send(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        with self._lock:
            exposed = self._series
            for series in snapshot.series:
                key = (series.name, series.type, series.tags)
                entry = exposed.get(key)
                if entry is None:
                    entry = exposed[key] = _Exposed(series.type)
                stats = series.stats
                if series.type == COUNTER:
                    entry.value += stats.get("count", 0.0)
                elif series.type == GAUGE:
                    entry.value = stats.get("value", 0.0)
                elif series.type == TIMER or series.type == HISTOGRAM:
                    entry.count += stats.get("count", 0.0)
                    entry.sum += stats.get("sum", 0.0)
                    entry.quantiles = {q: value for stat, value in stats.items()
                                       if (q := _quantile(stat)) is not None}
                    for stat, value in stats.items():
                        bound = _bucket_bound(stat)
                        if bound is not None:
                            entry.buckets[bound] = entry.buckets.get(bound, 0.0) + value
                else:  # set, trace: the interval's count
                    entry.value = stats.get("count", 0.0)
                entry.seen = now
            expiry = self.config["expiry_seconds"]
            if expiry:
                for key in [k for k, e in exposed.items() if now - e.seen > expiry]:
                    del exposed[key]

    def collect(self) -> Iterator[Metric]:
        """The exposed state as metric families, one per name and type (prometheus-client
        calls it on each scrape, on its server's thread)."""
        with self._lock:
            items = sorted(self._series.items(), key=lambda item: item[0])
            now = time.monotonic()
            expiry = self.config["expiry_seconds"]
            items = [(k, e) for k, e in items if not expiry or now - e.seen <= expiry]
            families: dict[tuple[str, str], Metric] = {}
            for (name, kind, tags), entry in items:
                base = metric_name(name)
                prom_type = {COUNTER: "counter", TIMER: "summary",
                             HISTOGRAM: "summary"}.get(kind, "gauge")
                if entry.buckets:
                    prom_type = "histogram"
                if kind == SET:
                    base += "_unique"
                family = families.get((base, prom_type))
                if family is None:
                    family = families[(base, prom_type)] = Metric(
                        base, f"pystatsd {kind} {name}", prom_type)
                labels = _labels(tags)
                if prom_type == "counter":
                    family.add_sample(family.name + "_total", labels, entry.value)
                elif prom_type == "histogram":
                    for bound, count in sorted(entry.buckets.items()):
                        family.add_sample(base + "_bucket", {**labels, "le": repr(bound)},
                                          count)
                    family.add_sample(base + "_bucket", {**labels, "le": "+Inf"}, entry.count)
                    family.add_sample(base + "_count", labels, entry.count)
                    family.add_sample(base + "_sum", labels, entry.sum)
                elif prom_type == "summary":
                    for quantile, value in sorted(entry.quantiles.items()):
                        family.add_sample(base, {**labels, "quantile": repr(quantile)}, value)
                    family.add_sample(base + "_count", labels, entry.count)
                    family.add_sample(base + "_sum", labels, entry.sum)
                else:
                    family.add_sample(base, labels, entry.value)
        yield from families.values()

    def stats(self) -> dict[str, float]:
        result = super().stats()
        series = getattr(self, "_series", None)
        result["exposed_series"] = len(series) if series is not None else 0
        return result

    def shutdown(self, timeout: float) -> int:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        return 0
