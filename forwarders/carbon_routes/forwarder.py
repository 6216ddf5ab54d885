"""The ``carbon_routes`` relay: graphite lines routed as carbon-relay-ng routes them.

Each line (``path value timestamp``) goes, in this order, through the blocklist (dropped,
counted ``blocked``), the rewriters (each in turn), the aggregators (a matching datapoint goes
into each matching aggregator, and on to the routes unless one of them has ``drop_raw``), and
then every route whose matcher matches (carbon-relay-ng evaluates every route):

* ``send_all_match``: to every destination of the route whose own matcher matches;
* ``send_first_match``: to the first destination whose matcher matches;
* ``consistent_hashing`` / ``consistent_hashing_v2``: to the owner on carbon's ring (see
  :mod:`forwarders.carbon_routes.ring`), ``replication_factor`` distinct destinations.

Aggregator output is routed the same way (not aggregated again). A line that is not three
fields with a numeric value and timestamp, or whose rewritten path holds whitespace, is
refused and counted (``refused_lines``): nothing a client sends becomes a second line.

The receive thread only queues each datagram's lines (``submit_lines``); routing, aggregation
and sending run on the forwarder's own thread, each round.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from forwarders import ForwarderContext, NeededPath, RelayForwarder
from forwarders.carbon_routes.aggregation import Aggregator
from forwarders.carbon_routes.destination import Destination
from forwarders.carbon_routes.matching import Matcher, Rewriter, blocklist_matcher
from forwarders.carbon_routes.ring import CarbonRing
from forwarders.carbon_routes.schema import CONFIG_SCHEMA
from forwarders.spool import SpoolInUse

__all__ = ["CarbonRoutesConfigError", "CarbonRoutesForwarder"]

_WHITESPACE = re.compile(rb"\s")
_GROUP_REFERENCE = re.compile(r"\\g<(\w+)>")


class CarbonRoutesConfigError(ValueError):
    """A section that cannot work, with the key that says why."""


class _Route:
    def __init__(self, options: Mapping[str, Any], destinations: list[Destination],
                 matchers: list[Matcher]) -> None:
        self.key: str = options["key"]
        self.kind: str = options["type"]
        self.matcher = Matcher(options)
        self.destinations = destinations
        self.matchers = matchers
        self.replication = int(options["replication_factor"])
        self.ring: CarbonRing | None = None
        if self.kind.startswith("consistent_hashing"):
            self.ring = CarbonRing([(d.host, d.instance) for d in destinations],
                                   2 if self.kind.endswith("_v2") else 1)

    def targets(self, path: str) -> list[Destination]:
        if self.ring is not None:
            return [self.destinations[i]
                    for i in self.ring.destinations(path.encode(), self.replication)]
        chosen = [d for d, m in zip(self.destinations, self.matchers, strict=True)
                  if m.matches(path)]
        return chosen[:1] if self.kind == "send_first_match" else chosen


class CarbonRoutesForwarder(RelayForwarder):
    INPUT_FORMAT: ClassVar[str] = "graphite"
    """The listener format whose payloads this relay takes (pystatsd.wire_formats)."""
    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = CONFIG_SCHEMA
    TOTALS: ClassVar[tuple[str, ...]] = (
        *RelayForwarder.TOTALS, "lines_in", "blocked", "refused_lines", "unrouted",
        "aggregated", "aggregator_dropped", "destination.*.enqueued", "destination.*.sent",
        "destination.*.dropped_queue_full", "destination.*.dropped_partial",
        "destination.*.connects", "destination.*.connect_failures", "destination.*.send_errors",
        "destination.*.spooled", "destination.*.spool_sent", "destination.*.spool_dropped")
    LEVELS: ClassVar[tuple[str, ...]] = (*RelayForwarder.LEVELS, "aggregator_buckets",
                                         "destination.*.queued", "destination.*.spool_bytes",
                                         "destination.*.up")

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        super().__init__(name, config, context)
        config = self.config
        where = f"forwarders.{name}"
        self.counters.update({"lines_in": 0, "blocked": 0, "refused_lines": 0, "unrouted": 0,
                              "aggregated": 0})
        try:
            self._blocklist = [blocklist_matcher(entry) for entry in config["blocklist"]]
        except (ValueError, re.error) as exc:
            raise CarbonRoutesConfigError(f"{where}.blocklist: {exc}") from exc
        self._rewriters = [_build(Rewriter, r, f"{where}.rewriters[{i}]")
                           for i, r in enumerate(config["rewriters"])]
        self._aggregators = [_aggregator(a, f"{where}.aggregators[{i}]")
                             for i, a in enumerate(config["aggregators"])]
        spool_root = self.needed_paths(name, config, context).get("spool_dir")
        self._destinations: dict[str, Destination] = {}
        self._routes: list[_Route] = []
        for r, route in enumerate(config["routes"]):
            here = f"{where}.routes[{r}]"
            destinations, matchers = [], []
            for d, spec in enumerate(route["destinations"]):
                destination = self._destination(spec, spool_root.path if spool_root else None,
                                                 f"{here}.destinations[{d}]")
                destinations.append(destination)
                matchers.append(_build(Matcher, spec, f"{here}.destinations[{d}]"))
            try:
                self._routes.append(_Route(route, destinations, matchers))
            except (ValueError, re.error) as exc:
                raise CarbonRoutesConfigError(f"{here}: {exc}") from exc
        self._closing = False  # the next round emits every open aggregator bucket

    @classmethod
    def needed_paths(cls, name: str, section: Mapping[str, Any],
                     context: ForwarderContext) -> dict[str, NeededPath]:
        spooled = any(d.get("spool") for r in section.get("routes", [])
                      for d in r.get("destinations", []))
        if not spooled:
            return {}
        directory = Path(section.get("spool_dir") or context.state_dir / "spool" / name)
        return {"spool_dir": NeededPath(directory, directory=True)}

    def _destination(self, spec: Mapping[str, Any], spool_root: Path | None,
                     where: str) -> Destination:
        host, _, port = spec["address"].rpartition(":")
        if not host or not port.isdigit():
            raise CarbonRoutesConfigError(f"{where}.address: {spec['address']!r} is not "
                                          "host:port")
        host = host.strip("[]")
        key = f"{host}:{port}:{spec.get('instance') or ''}:{'pickle' if spec['pickle'] else ''}"
        if key in self._destinations:  # one destination listed by several routes: one queue
            return self._destinations[key]
        destination = Destination(
            host, int(port), instance=spec.get("instance"), pickle=bool(spec["pickle"]),
            queue_lines=int(spec["queue_lines"]), backoff_min=float(self.config["backoff_min"]),
            backoff_max=float(self.config["backoff_max"]),
            connect_timeout=float(self.config["connect_timeout"]))
        if spec["spool"] and spool_root is not None:
            destination.spool_dir = spool_root / destination.key
            destination.spool_max_bytes = int(spec["spool_max_bytes"])
        self._destinations[key] = destination
        return destination

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        for destination in self._destinations.values():
            try:
                destination.open()
            except SpoolInUse as exc:
                raise CarbonRoutesConfigError(f"forwarders.{self.name}.spool_dir: {exc}") \
                    from exc
            except OSError as exc:
                raise CarbonRoutesConfigError(
                    f"forwarders.{self.name}.spool_dir: cannot use {destination.spool_dir}: "
                    f"{exc.strerror}") from exc

    def close(self, timeout: float) -> int:
        self._closing = True  # read by the sender thread's last rounds
        return super().close(timeout)

    def shutdown(self, timeout: float) -> int:
        for destination in self._destinations.values():
            destination.close()
        return 0

    def stats(self) -> dict[str, float]:
        stats: dict[str, float] = {**super().stats()}
        stats["aggregator_dropped"] = sum(a.dropped for a in self._aggregators)
        stats["aggregator_buckets"] = sum(a.open_buckets() for a in self._aggregators)
        for destination in self._destinations.values():
            for key, value in destination.stats().items():
                stats[f"destination.{destination.key}.{key}"] = value
        return stats

    # -- receive thread -------------------------------------------------------------------
    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        return self.buffer_batch(lines)

    # -- sender thread --------------------------------------------------------------------
    def send_round(self, now: float) -> None:
        batches = self.take_batches()
        wall_clock = time.time()
        for lines in batches:
            for line in lines:
                self._route_line(line)
        for aggregator in self._aggregators:
            for path, value, stamp in aggregator.due(wall_clock, everything=self._closing):
                self._route(path, f"{path} {value!r} {stamp}".encode())
        if self.context.debug_mode:
            for destination in self._destinations.values():
                while destination.queue:
                    line = destination.queue.popleft()
                    self.log.info("debug_mode, not sent to %s:%d: %r", destination.host,
                                  destination.port, line.decode(errors="replace"))
                    self.counters["sent"] += 1
            return
        for destination in self._destinations.values():
            before = destination.counters["sent"]
            destination.pump(now)
            self.counters["sent"] += destination.counters["sent"] - before

    def pending(self) -> int:
        buckets = sum(a.open_buckets() for a in self._aggregators) if self._closing else 0
        return (self.buffered_lines + buckets
                + sum(d.pending() for d in self._destinations.values()))

    def discard(self) -> int:
        return self.discard_buffered() + sum(d.discard() for d in self._destinations.values())

    def _route_line(self, line: bytes) -> None:
        self.counters["lines_in"] += 1
        fields = line.split()
        if len(fields) != 3:
            self._refuse()
            return
        raw_path, value_text, stamp_text = fields
        try:
            value, stamp = float(value_text), float(stamp_text)
            path = raw_path.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            self._refuse()
            return
        if not (math.isfinite(value) and math.isfinite(stamp)):
            self._refuse()
            return
        if any(m.matches(path) for m in self._blocklist):
            self.counters["blocked"] += 1
            return
        for rewriter in self._rewriters:
            path = rewriter.rewrite(path)
        encoded = path.encode()
        if not encoded or _WHITESPACE.search(encoded) is not None:
            self._refuse()  # a rewriter must not make one line two, nor an empty path
            return
        drop_raw = False
        for aggregator in self._aggregators:
            if aggregator.add(path, value, stamp):
                self.counters["aggregated"] += 1
                drop_raw = drop_raw or aggregator.drop_raw
        if not drop_raw:
            self._route(path, b" ".join((encoded, value_text, stamp_text)))

    def _route(self, path: str, line: bytes) -> None:
        routed = False
        for route in self._routes:
            if not route.matcher.matches(path):
                continue
            for destination in route.targets(path):
                destination.enqueue(line)
                routed = True
        if not routed:
            self.counters["unrouted"] += 1

    def _refuse(self) -> None:
        self.counters["refused_lines"] += 1


def _build(cls: Any, options: Mapping[str, Any], where: str) -> Any:
    try:
        return cls(options)
    except re.error as exc:
        raise CarbonRoutesConfigError(f"{where}: bad regular expression: {exc}") from exc


def _aggregator(options: Mapping[str, Any], where: str) -> Aggregator:
    aggregator: Aggregator = _build(Aggregator, options, where)
    for name in _GROUP_REFERENCE.findall(aggregator.template):
        known = (name.isdigit() and int(name) <= aggregator.regex.groups) \
            or name in aggregator.regex.groupindex
        if not known:
            raise CarbonRoutesConfigError(f"{where}.format: ${name} is not a group of regex")
    return aggregator
