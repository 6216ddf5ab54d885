"""The ``graphite`` forwarder: each flush to carbon, over plaintext or pickle.

Each flush becomes one payload of datapoints stamped with the interval's start (whole seconds,
aligned to the flush interval, so a point lands in the whisper slot of the interval it
describes), sent over one kept-open TCP connection. A connection that carbon closed between
flushes is noticed before writing and made again; a failure drops it and starts a backoff.

Without a spool (``spool_max_bytes: 0``, the default) a flush that cannot be sent is lost,
counted (``send_errors``) and logged. With one, it is written to the spool instead and sent,
oldest first, before the next flush that finds carbon up; the spool survives restarts and holds
plaintext lines, so a change of ``protocol`` does not strand it. A payload cut by a connection
that died half-way is sent again whole: carbon keeps one value per path and slot, so a
datapoint received twice is stored once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from forwarders import AggregateForwarder, ForwarderContext, NeededPath, Snapshot
from forwarders.base import ETSY_TIMER_STATS
from forwarders.graphite.naming import GraphiteNaming, UnsafeName
from forwarders.graphite.wire import CarbonConnection, Datapoint, encode_pickle, encode_plaintext
from forwarders.schema import reconnect_properties
from forwarders.spool import Record, Spool, SpoolInUse

__all__ = ["GraphiteConfigError", "GraphiteForwarder"]

_SPOOL_TOPIC = "graphite-plaintext"


class GraphiteConfigError(ValueError):
    """A graphite section that cannot work (its spool directory is unusable)."""


def _prefix(description: str, default: str) -> dict[str, Any]:
    return {"type": "string", "default": default, "description": description}


class GraphiteForwarder(AggregateForwarder):
    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "host": {"type": "string", "default": "127.0.0.1",
                     "description": "Carbon host (Etsy's `graphiteHost`)."},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 2003,
                     "description": "Carbon's plaintext port (Etsy's `graphitePort`)."},
            "pickle_port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 2004,
                            "description": "Carbon's pickle port (Etsy's `graphitePicklePort`)."},
            "protocol": {"enum": ["plaintext", "pickle"], "default": "plaintext",
                         "description": "How datapoints are written (Etsy's `graphiteProtocol`: "
                                        "`text` is `plaintext`)."},
            "naming": {"enum": ["plain", "etsy"], "default": "plain",
                       "description": "plain: `<prefix><name>.<stat>` for every stat. etsy: the "
                                      "paths of Etsy statsd's graphite backend (see `etsy`), so "
                                      "an Etsy user's dashboards keep working."},
            "prefix": _prefix("Put before every path with `naming: plain` (include the dot: "
                              "`pystatsd.`).", ""),
            "tags": {"enum": ["graphite", "omit"], "default": "graphite",
                     "description": "graphite: tags written as graphite 1.1 tags "
                                    "(`path;k=v;k2=v2`). omit: no tags (series that differ "
                                    "only by tags then write the same path)."},
            "sanitize": {"type": "boolean", "default": True,
                         "description": "Make names and tags safe graphite paths (Etsy's "
                                        "`keyNameSanitize`): whitespace to `_`, `/` to `-`, "
                                        "other characters outside `[A-Za-z0-9_.-]` removed from "
                                        "names. false: a series that would need it is refused "
                                        "and counted (`refused_names`)."},
            "etsy": {
                "type": "object",
                "additionalProperties": False,
                "default": {},
                "description": "Etsy graphite backend naming options (`naming: etsy`), by "
                               "their Etsy names in snake case.",
                "properties": {
                    "legacy_namespace": {"type": "boolean", "default": True,
                                         "description": "`legacyNamespace`."},
                    "global_prefix": _prefix("`globalPrefix` (not with the legacy namespace).",
                                             "stats"),
                    "prefix_counter": _prefix("`prefixCounter`.", "counters"),
                    "prefix_timer": _prefix("`prefixTimer`.", "timers"),
                    "prefix_gauge": _prefix("`prefixGauge`.", "gauges"),
                    "prefix_set": _prefix("`prefixSet`.", "sets"),
                    "global_suffix": _prefix("`globalSuffix`.", ""),
                    "flush_counts": {"type": "boolean", "default": True,
                                     "description": "`flush_counts`: counters' counts too."},
                },
            },
            "per_frame": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 500,
                          "description": "Datapoints per pickle frame (carbon's "
                                         "MAX_DATAPOINTS_PER_MESSAGE)."},
            "send_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 10.0,
                             "description": "Seconds a flush's write may stall before the "
                                            "connection is dropped."},
            **reconnect_properties(backoff_min=0.5, backoff_max=30.0,
                                   connects="a connect to carbon"),
            "spool_dir": {"type": "string",
                          "description": "Directory of the disk spool; default "
                                         "`<state_dir>/spool/<forwarder name>`."},
            "spool_max_bytes": {"type": "integer", "minimum": 0, "default": 0,
                                "description": "Size bound of the disk spool that keeps flushes "
                                               "carbon could not take; 0: no spool (such "
                                               "flushes are lost and counted)."},
        },
    }
    TOTALS: ClassVar[tuple[str, ...]] = (*AggregateForwarder.TOTALS, "datapoints_sent",
                                         "refused_names", "connects", "spooled", "spool_sent",
                                         "spool_dropped")
    LEVELS: ClassVar[tuple[str, ...]] = (*AggregateForwarder.LEVELS, "spool_bytes")

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        super().__init__(name, config, context)
        config = self.config
        self.counters.update({"datapoints_sent": 0, "refused_names": 0, "spooled": 0,
                              "spool_sent": 0, "spool_dropped": 0})
        self._naming = GraphiteNaming(config)
        self._pickle = config["protocol"] == "pickle"
        self._per_frame = int(config["per_frame"])
        port = config["pickle_port"] if self._pickle else config["port"]
        self._connection = CarbonConnection(
            config["host"], int(port), connect_timeout=float(config["connect_timeout"]),
            send_timeout=float(config["send_timeout"]), backoff_min=float(config["backoff_min"]),
            backoff_max=float(config["backoff_max"]))
        paths = self.needed_paths(name, config, context)
        self._spool_dir: Path | None = paths["spool_dir"].path if paths else None
        self._spool: Spool | None = None
        self._refused_logged = 0.0
        self._shut = False

    @classmethod
    def needed_paths(cls, name: str, section: Mapping[str, Any],
                     context: ForwarderContext) -> dict[str, NeededPath]:
        if not section.get("spool_max_bytes"):
            return {}
        directory = Path(section.get("spool_dir") or context.state_dir / "spool" / name)
        return {"spool_dir": NeededPath(directory, directory=True)}

    @classmethod
    def needed_stats(cls, section: Mapping[str, Any]) -> frozenset[str]:
        # Etsy's timer paths (mean_90, sum_squares...) are only in its naming.
        return frozenset({ETSY_TIMER_STATS}) if section.get("naming") == "etsy" else frozenset()

    def stats(self) -> dict[str, float]:
        spool = self._spool
        return {**super().stats(), "connects": self._connection.connects,
                "spool_bytes": spool.bytes if spool is not None else 0}

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        if self._spool_dir is None:
            return
        where = f"forwarders.{self.name}.spool_dir"
        try:
            self._spool = Spool(self._spool_dir, int(self.config["spool_max_bytes"]),
                                log=self.log)
        except SpoolInUse as exc:
            raise GraphiteConfigError(f"{where}: {exc}") from exc
        except OSError as exc:
            raise GraphiteConfigError(f"{where}: cannot use {self._spool_dir}: "
                                      f"{exc.strerror}") from exc

    def shutdown(self, timeout: float) -> int:
        self._shut = True
        self._connection.shut()
        if self._spool is not None:
            self._spool.close()  # what it holds is sent after the next start
        return 0

    # -- sending --------------------------------------------------------------------------
    def send(self, snapshot: Snapshot) -> None:
        if self._shut:  # a send stalled past close: the spool and the connection are gone
            raise ConnectionError("forwarder closed")
        points = self.datapoints(snapshot)
        if self._spool is None:
            self._write(points)
            self.counters["datapoints_sent"] += len(points)
            return
        try:
            self._replay_spool()
            self._write(points)
            self.counters["datapoints_sent"] += len(points)
        except OSError as exc:
            lines = encode_plaintext(points)
            dropped = self._spool.append([Record(_SPOOL_TOPIC, None, lines)])
            if dropped:
                self.counters["spool_dropped"] += len(points)
                raise ConnectionError(f"carbon unreachable ({exc}) and the spool is full") \
                    from exc
            self.counters["spooled"] += len(points)

    def describe(self, snapshot: Snapshot) -> Iterator[str]:
        yield from encode_plaintext(self.datapoints(snapshot)).decode().splitlines()

    def datapoints(self, snapshot: Snapshot) -> list[Datapoint]:
        """The flush as (path, value, timestamp), refused series counted and left out."""
        stamp = int(snapshot.start)
        points: list[Datapoint] = []
        for series in snapshot.series:
            try:
                points.extend((path, value, stamp) for path, value
                              in self._naming.datapoints(series, snapshot.interval))
            except UnsafeName as exc:
                self.counters["refused_names"] += 1
                now = time.monotonic()
                if now - self._refused_logged > 10:
                    self._refused_logged = now
                    self.log.warning("forwarder %s: series refused (sanitize is off): %s",
                                     self.name, exc)
        return points

    def _write(self, points: list[Datapoint]) -> None:
        if not points:
            return
        payload = (encode_pickle(points, self._per_frame) if self._pickle
                   else encode_plaintext(points))
        self._connection.send(payload)

    def _replay_spool(self) -> None:
        spool = self._spool
        assert spool is not None
        while (record := spool.peek()) is not None:
            points = _points_of(record.value)
            self._write(points)
            spool.pop()
            self.counters["spool_sent"] += len(points)
            self.counters["datapoints_sent"] += len(points)


def _points_of(lines: bytes) -> list[Datapoint]:
    """Our own spooled plaintext back into datapoints (for pickle, or to count them)."""
    points: list[Datapoint] = []
    for line in lines.decode().splitlines():
        path, value, stamp = line.split(" ")
        points.append((path, float(value), int(stamp)))
    return points
