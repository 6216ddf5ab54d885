"""Series -> graphite paths: pystatsd's plain naming, or Etsy statsd's graphite backend's.

Plain: ``<prefix><name>.<stat>`` for every stat of every series (``api.latency.p99``,
``hits.count``, ``queue.depth.value``).

Etsy (``backends/graphite.js``), with its defaults: legacy namespace on, counters as
``stats.NAME`` (the rate) and ``stats_counts.NAME`` (the count), timers as
``stats.timers.NAME.<stat>``, gauges as ``stats.gauges.NAME``, sets as ``stats.sets.NAME.count``.
With ``legacy_namespace: false``: ``<global_prefix>.<prefix_counter>.NAME.rate`` and ``.count``,
``<global_prefix>.<prefix_timer>.NAME.<stat>`` and so on; ``global_suffix`` after the name and
stat, tags after that (``;k=v``), as graphite.js does. Timer stats are named as Etsy names them
(``lower``, ``upper``, ``std``, ``count_ps``, ``median``), with Etsy's extra ones, which this
naming asks the daemon for (``ETSY_TIMER_STATS``): ``sum_squares``, per threshold
``count_90``, ``mean_90``, ``upper_90``, ``sum_90``, ``sum_squares_90``, and ``histogram.bin_*``
where ``histogram_buckets`` has bounds for the name. Those replace the
percentile keys (``p90``), which Etsy does not write: Etsy's ``upper_90`` picks its sample by
``round`` where ``p90`` is nearest-rank. A snapshot without them (from a daemon not asked)
still gets ``upper_90`` from ``p90``.

Client bytes never become graphite syntax. A path is one whitespace-free field and ``;``
starts its tags, so with ``sanitize`` (the default, Etsy's ``keyNameSanitize``) a name has
whitespace made ``_``, ``/`` made ``-`` and everything but ``[A-Za-z0-9_.-]`` removed, and tag
keys and values have each character graphite refuses there made ``_``. Without ``sanitize`` a
series whose name or tags would need that is refused (the caller counts it)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from forwarders import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, SeriesStats, Tags

__all__ = ["GraphiteNaming", "UnsafeName"]

_ETSY_TIMER_STATS = {"min": "lower", "max": "upper", "stddev": "std"}
_NAME_WHITESPACE = re.compile(r"\s+")
_NAME_OUTSIDE = re.compile(r"[^A-Za-z0-9_.\-]")
_TAG_KEY_OUTSIDE = re.compile(r"[\s;!^=]")
_TAG_VALUE_OUTSIDE = re.compile(r"[\s;]")
_UNSAFE_NAME = re.compile(r"[\s;]")


class UnsafeName(ValueError):
    """A series whose name or tags would be graphite syntax, with ``sanitize`` off."""


class GraphiteNaming:
    """Given the forwarder section (``naming``, ``prefix``, ``etsy``, ``tags``, ``sanitize``),
    turns each series into its (path, value) datapoints."""

    def __init__(self, section: Mapping[str, Any]) -> None:
        self.etsy = section["naming"] == "etsy"
        self.prefix = section["prefix"]
        self.with_tags = section["tags"] == "graphite"
        self.sanitize = bool(section["sanitize"])
        etsy = section["etsy"]
        self.flush_counts = bool(etsy["flush_counts"])
        self.legacy = bool(etsy["legacy_namespace"])
        self.suffix = "." + etsy["global_suffix"] if etsy["global_suffix"] else ""
        if self.legacy:
            spaces = {"counter": ["stats"], "timer": ["stats", "timers"],
                      "gauge": ["stats", "gauges"], "set": ["stats", "sets"]}
        else:
            root = [etsy["global_prefix"]] if etsy["global_prefix"] else []
            spaces = {kind: root + ([etsy[f"prefix_{kind}"]] if etsy[f"prefix_{kind}"] else [])
                      for kind in ("counter", "timer", "gauge", "set")}
        self._spaces = {kind: ".".join(parts) + "." if parts else ""
                        for kind, parts in spaces.items()}

    def datapoints(self, series: SeriesStats, interval: float) -> Iterator[tuple[str, float]]:
        """The (path, value) pairs of one series; raises :class:`UnsafeName`."""
        name = self._name(series.name)
        tags = self._tags(series.tags) if self.with_tags else ""
        if not self.etsy:
            for stat, value in series.stats.items():
                yield f"{self.prefix}{name}.{stat}{tags}", value
            return
        kind, stats = series.type, series.stats
        if kind in (COUNTER, TRACE):
            count = stats["count"]
            rate = stats.get("rate", count / interval if interval > 0 else 0.0)
            space = self._spaces["counter"]
            if self.legacy:
                yield f"{space}{name}{self.suffix}{tags}", rate
                if self.flush_counts:
                    yield f"stats_counts.{name}{self.suffix}{tags}", count
            else:
                yield f"{space}{name}.rate{self.suffix}{tags}", rate
                if self.flush_counts:
                    yield f"{space}{name}.count{self.suffix}{tags}", count
        elif kind in (TIMER, HISTOGRAM):
            space = self._spaces["timer"]
            extra = series.extra_stats
            for stat, value in stats.items():
                if extra is not None and _is_percentile(stat):
                    continue
                yield f"{space}{name}.{_etsy_timer_stat(stat)}{self.suffix}{tags}", value
            if extra is not None:
                for stat, value in extra.items():
                    yield f"{space}{name}.{stat}{self.suffix}{tags}", value
            if "count" in stats and interval > 0:
                yield f"{space}{name}.count_ps{self.suffix}{tags}", stats["count"] / interval
        elif kind == GAUGE:
            yield f"{self._spaces['gauge']}{name}{self.suffix}{tags}", stats["value"]
        elif kind == SET:
            yield f"{self._spaces['set']}{name}.count{self.suffix}{tags}", stats["count"]
        else:  # a type added later: plain names under the global prefix, never dropped silently
            for stat, value in stats.items():
                yield f"{self._spaces['counter']}{name}.{stat}{self.suffix}{tags}", value

    def _name(self, name: str) -> str:
        if self.sanitize:
            clean = _NAME_OUTSIDE.sub("", _NAME_WHITESPACE.sub("_", name).replace("/", "-"))
            if not clean:
                raise UnsafeName(f"name {name[:80]!r} is empty once sanitized")
            return clean
        if _UNSAFE_NAME.search(name) is not None or not name:
            raise UnsafeName(f"name {name[:80]!r} holds whitespace or ';'")
        return name

    def _tags(self, tags: Tags) -> str:
        parts = []
        for key, value in tags:
            if self.sanitize:
                key = _TAG_KEY_OUTSIDE.sub("_", key)
                value = _TAG_VALUE_OUTSIDE.sub("_", value)
                if value.startswith("~"):
                    value = "_" + value[1:]
                value = value or "_"  # graphite refuses an empty value; a flag tag keeps its key
            elif (not key or not value or value.startswith("~")
                  or _TAG_KEY_OUTSIDE.search(key) or _TAG_VALUE_OUTSIDE.search(value)):
                raise UnsafeName(f"tag {key[:40]!r}={value[:40]!r} is not a graphite tag")
            parts.append(f";{key}={value}")
        return "".join(parts)


def _etsy_timer_stat(stat: str) -> str:
    """Our timer stat key -> Etsy's: min -> lower, max -> upper, stddev -> std, p90 -> upper_90
    (Etsy's upper_NN is the largest sample of the lowest NN%: the NNth percentile)."""
    if stat in _ETSY_TIMER_STATS:
        return _ETSY_TIMER_STATS[stat]
    if _is_percentile(stat):
        return "upper_" + stat[1:]
    return stat


def _is_percentile(stat: str) -> bool:
    return stat.startswith("p") and stat[1:2].isdigit()
