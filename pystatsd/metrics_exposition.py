"""``/metrics``: the daemon's self-metrics and every forwarder stat in Prometheus' text format.

A prometheus-client ``Collector`` reads the live numbers at each scrape (nothing is copied
into client-side metric objects): self-metric counters become ``pystatsd_<name>_total``
(``rejected.<reason>`` one family with a ``reason`` label); with receive workers, each
worker's share of them (as of its last flush) also ``pystatsd_worker_<name>_total`` with a
``worker`` label, beside the summed family, whose name stays; forwarder stats
``pystatsd_forwarder_<key>{forwarder=...}`` as counters or gauges by what the forwarder
declares (``stat_kind``), with a ``backend``/``group`` label for relay backend and group
stats. Process metrics come from prometheus-client's own process collector."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from pystatsd import __version__
from pystatsd.admin_control import AdminControl

__all__ = ["CONTENT_TYPE_LATEST", "DaemonCollector", "metrics_registry", "render"]

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_LABELLED = {"rejected": "reason"}
"""Self-metric counters whose last part is a label value, not a name."""
_FORWARDER_LABELLED = ("backend", "group")
"""Forwarder stat keys ``<part>.<id>.<stat>`` whose id becomes a label."""


def metric_name(*parts: str) -> str:
    return "_".join(_UNSAFE.sub("_", part) for part in parts if part).strip("_")


def self_counter(family: Callable[..., Any], prefix: str, name: str, labels: list[str],
                 values: list[str], count: int) -> None:
    """One self-metric counter into its family (``rejected.<reason>``: the reason a label)."""
    head, _, tail = name.partition(".")
    if head in _LABELLED and tail:
        family(CounterMetricFamily, metric_name(prefix, head),
               f"Self-metric {head}.<{_LABELLED[head]}>",
               [*labels, _LABELLED[head]]).add_metric([*values, tail], float(count))
    else:
        family(CounterMetricFamily, metric_name(prefix, name), f"Self-metric {name}",
               labels).add_metric(values, float(count))


class DaemonCollector(Collector):
    def __init__(self, control: AdminControl) -> None:
        self.control = control

    def collect(self) -> Iterator[Metric]:
        control = self.control
        daemon = control.daemon
        families: dict[str, Any] = {}

        def family(cls: type[Any], name: str, doc: str, labels: list[str]) -> Any:
            existing = families.get(name)
            if existing is not None and not isinstance(existing, cls):
                name += "_level"  # one name declared a total and a level by two forwarders
                existing = families.get(name)
            if existing is None:
                existing = families[name] = cls(name, doc, labels=labels)
            return existing

        info = family(GaugeMetricFamily, "pystatsd_build_info", "pystatsd version and mode",
                      ["version", "mode"])
        info.add_metric([__version__, daemon.config["mode"]], 1.0)
        family(GaugeMetricFamily, "pystatsd_uptime_seconds", "Seconds since start",
               []).add_metric([], time.time() - daemon.started_at)
        family(GaugeMetricFamily, "pystatsd_health_up",
               "1 unless an operator set health down (admin console/HTTP)",
               []).add_metric([], float(control.health == "up"))
        family(GaugeMetricFamily, "pystatsd_last_reload_timestamp_seconds",
               "When the config was last reloaded (0: never)",
               []).add_metric([], daemon.last_reload)
        received = family(CounterMetricFamily, "pystatsd_listener_received_bytes",
                          "Payload bytes received per listener", ["protocol", "address"])
        for listener in daemon.listeners:
            host, port = listener.address
            received.add_metric([listener.spec["protocol"], f"{host}:{port}"],
                                float(listener.bytes_received))
        for name, count in sorted(control.counters().items()):
            self_counter(family, "pystatsd", name, [], [], count)
        if daemon.workers is not None:
            for index, counters in daemon.workers.worker_counters():
                for name, count in sorted(counters.items()):
                    self_counter(family, "pystatsd_worker", name, ["worker"], [str(index)],
                                 count)
        for forwarder_name, forwarder in list(daemon.forwarders.items()):
            for key, value in sorted(forwarder.stats().items()):
                try:
                    kind = forwarder.stat_kind(key)
                except KeyError:  # undeclared: the flush logs it once
                    continue
                cls = CounterMetricFamily if kind == "total" else GaugeMetricFamily
                parts = key.split(".")
                labels, values = ["forwarder"], [forwarder_name]
                if len(parts) >= 3 and parts[0] in _FORWARDER_LABELLED:
                    labels.append(parts[0])
                    values.append(".".join(parts[1:-1]))
                    parts = [parts[0], parts[-1]]
                family(cls, metric_name("pystatsd_forwarder", *parts),
                       f"Forwarder stat {'.'.join(parts)} ({kind})",
                       labels).add_metric(values, float(value))
        yield from families.values()


def metrics_registry(control: AdminControl) -> CollectorRegistry:
    """A registry of this daemon's collector and the process collectors (never the global
    default registry: each daemon, and each test, has its own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(control))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
