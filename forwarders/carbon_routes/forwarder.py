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

Runtime routes (the :class:`~forwarders.RelayForwarder` hook, carbon-relay-ng's ``addRoute``,
``modRoute``, ``modDest``, ``delRoute``): a route is one ``routes`` entry with ``name`` for its
``key``. A new list is validated against the section's schema and built, then swapped in under
the lock every round holds, between two rounds: what earlier datagrams brought is routed the
old way first. A destination named again (same address, instance and protocol) is the same
object: its connection, queue, spool and counters stay. One no longer named is retired: it keeps
sending what it holds; once it holds nothing it is closed, or, when it is down with lines in its
spool, closed with the spool left on disk (logged, with its directory): a route naming it again
sends them. Blocklist, rewriters and aggregators change by reload.

Reload: a section whose destinations spool is closed before its successor starts (the spools'
locks), see :meth:`CarbonRoutesForwarder.close_before_successor`.
"""

from __future__ import annotations

import math
import re
import threading
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
from forwarders.runtime_routes import by_identity, hook_routes, retire, route_entries
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
    ROUTES_KEY: ClassVar[str] = "routes"
    ROUTE_NAME_KEY: ClassVar[str] = "key"
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
        self._spool_root = Path(config.get("spool_dir") or context.state_dir / "spool" / name)
        self._routing = threading.Lock()  # held by each round and by a route change
        self._opened = False
        self._retired: list[Destination] = []  # removed at runtime, still sending
        self._route_sections: list[dict[str, Any]] = list(config["routes"])
        self._routes, self._destinations, _ = self._build_routes(config["routes"], {}, where)
        self._closing = False  # the next round emits every open aggregator bucket

    def _build_routes(self, sections: list[dict[str, Any]], known: dict[str, Destination],
                      where: str) -> tuple[list[_Route], dict[str, Destination],
                                           list[Destination]]:
        """Routes, every destination they name (by identity), and which of those are new;
        ``known`` destinations are reused, unchanged."""
        destinations: dict[str, Destination] = {}
        fresh: list[Destination] = []
        routes: list[_Route] = []
        for r, route in enumerate(sections):
            here = f"{where}.routes[{r}]"
            targets, matchers = [], []
            for d, spec in enumerate(route["destinations"]):
                place = f"{here}.destinations[{d}]"
                key = _identity(spec, place)
                destination = destinations.get(key) or known.get(key)
                if destination is None:
                    destination = self._destination(spec, place)
                    fresh.append(destination)
                elif key in known and not _same_spool(destination, spec):
                    raise CarbonRoutesConfigError(
                        f"{place}: the spool of running destination {spec['address']} cannot "
                        "change at runtime (reload the config for that)")
                destinations[key] = destination
                targets.append(destination)
                matchers.append(_build(Matcher, spec, place))
            try:
                routes.append(_Route(route, targets, matchers))
            except re.error as exc:
                raise CarbonRoutesConfigError(f"{here}: bad regular expression: {exc}") \
                    from exc
            except ValueError as exc:
                raise CarbonRoutesConfigError(f"{here}: {exc}") from exc
        return routes, destinations, fresh

    @classmethod
    def needed_paths(cls, name: str, section: Mapping[str, Any],
                     context: ForwarderContext) -> dict[str, NeededPath]:
        spooled = any(d.get("spool") for r in section.get("routes", [])
                      for d in r.get("destinations", []))
        if not spooled:
            return {}
        directory = Path(section.get("spool_dir") or context.state_dir / "spool" / name)
        return {"spool_dir": NeededPath(directory, directory=True)}

    def _destination(self, spec: Mapping[str, Any], where: str) -> Destination:
        host, _, port = spec["address"].rpartition(":")
        host = host.strip("[]")
        destination = Destination(
            host, int(port), instance=spec.get("instance"), pickle=bool(spec["pickle"]),
            queue_lines=int(spec["queue_lines"]), backoff_min=float(self.config["backoff_min"]),
            backoff_max=float(self.config["backoff_max"]),
            connect_timeout=float(self.config["connect_timeout"]))
        destination.identity = _identity(spec, where)
        if spec["spool"]:
            destination.spool_dir = self._spool_root / destination.key
            destination.spool_max_bytes = int(spec["spool_max_bytes"])
        return destination

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        self._open_destinations(list(self._destinations.values()))
        self._opened = True

    def _open_destinations(self, destinations: list[Destination]) -> None:
        """Open their spools; on failure close the ones opened and raise the config error."""
        for index, destination in enumerate(destinations):
            try:
                destination.open()
            except OSError as exc:
                for opened in destinations[:index]:
                    opened.close()
                detail = str(exc) if isinstance(exc, SpoolInUse) else \
                    f"cannot use {destination.spool_dir}: {exc.strerror}"
                raise CarbonRoutesConfigError(f"forwarders.{self.name}.spool_dir: {detail}") \
                    from exc

    def close_before_successor(self) -> bool:
        """A spooling section holds its spools' locks: its successor may start only after it
        closed (and wrote to the spool what it could not deliver)."""
        return self.RELOAD_CLOSE_FIRST or any(
            d.spool_dir is not None for d in self._destinations.values())

    def close(self, timeout: float) -> int:
        self._closing = True  # read by the sender thread's last rounds
        return super().close(timeout)

    def shutdown(self, timeout: float) -> int:
        for destination in self._all_destinations():
            destination.close()
        return 0

    def _all_destinations(self) -> list[Destination]:
        return [*self._destinations.values(), *self._retired]

    # -- runtime routes (the RelayForwarder hook) -----------------------------------------
    def routes(self) -> list[dict[str, Any]]:
        """The routes now in use: ``routes`` entries, each with ``name`` for its ``key``."""
        return hook_routes(self._route_sections, "key")

    def apply_routes(self, routes: list[dict[str, Any]]) -> None:
        sections = _validated_routes(routes)
        where = f"forwarders.{self.name}"
        with self._routing:
            for lines in self.take_batches():  # what came before the change goes the old way
                for line in lines:
                    self._route_line(line)
            known = by_identity(self._all_destinations())
            built, destinations, fresh = self._build_routes(sections, known, where)
            if self._opened and not self.context.debug_mode:
                self._open_destinations(fresh)
            for section in sections:  # a kept destination takes its new queue bound
                for spec in section["destinations"]:
                    destinations[_identity(spec, where)].queue_lines = int(spec["queue_lines"])
            self._retired, removed = retire(self._destinations.values(),
                                            destinations.values(), self._retired)
            self._routes, self._destinations = built, destinations
            self._route_sections = sections
        self.log.info("carbon routes %s: routes now %s", self.name, "; ".join(
            f"{r.key} ({r.kind}) -> {len(r.destinations)} destinations" for r in built))
        for destination in removed:
            unspooled = destination.spool_dir is None and not destination.connected
            self.log.info("carbon routes %s: destination %s removed; it sends the %d lines it "
                          "holds, then closes%s", self.name, destination.label,
                          destination.pending(), " (not connected now and no spool: retried "
                          "until it answers or the relay closes)" if unspooled else "")

    def _pump_retired(self, now: float) -> None:
        for destination in list(self._retired):
            self.counters["sent"] += destination.pump(now)
            if destination.pending():
                continue
            spooled = destination.spool is not None and bool(destination.spool)
            if spooled and not destination.down:
                continue  # still replaying its spool
            if spooled:
                assert destination.spool is not None
                self.log.warning(
                    "carbon routes %s: removed destination %s is unreachable; its spool (%d "
                    "records, %d bytes) stays in %s and is sent when a route names it again",
                    self.name, destination.label, destination.spool.records,
                    destination.spool.bytes, destination.spool_dir)
            destination.close()
            self._retired.remove(destination)

    def stats(self) -> dict[str, float]:
        stats: dict[str, float] = {**super().stats()}
        stats["aggregator_dropped"] = sum(a.dropped for a in self._aggregators)
        stats["aggregator_buckets"] = sum(a.open_buckets() for a in self._aggregators)
        for destination in self._all_destinations():
            for key, value in destination.stats().items():
                stats[f"destination.{destination.key}.{key}"] = value
        return stats

    # -- receive thread -------------------------------------------------------------------
    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        return self.buffer_batch(lines)

    # -- sender thread --------------------------------------------------------------------
    def send_round(self, now: float) -> None:
        with self._routing:
            self._send_round(now)

    def _send_round(self, now: float) -> None:
        batches = self.take_batches()
        wall_clock = time.time()
        for lines in batches:
            for line in lines:
                self._route_line(line)
        for aggregator in self._aggregators:
            for path, value, stamp in aggregator.due(wall_clock, everything=self._closing):
                self._route(path, f"{path} {value!r} {stamp}".encode())
        if self.context.debug_mode:
            for destination in self._all_destinations():
                self.counters["sent"] += destination.log_unsent(self.log)
            return
        for destination in self._destinations.values():
            self.counters["sent"] += destination.pump(now)
        self._pump_retired(now)

    def pending(self) -> int:
        buckets = sum(a.open_buckets() for a in self._aggregators) if self._closing else 0
        return (self.buffered_lines + buckets
                + sum(d.pending() for d in self._all_destinations()))

    def discard(self) -> int:
        return self.discard_buffered() + sum(d.discard() for d in self._all_destinations())

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


_ROUTES_SCHEMA: dict[str, Any] = CONFIG_SCHEMA["properties"]["routes"]


def _validated_routes(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hook's route objects (``name`` for ``key``) checked against the section's schema,
    defaults filled: ``routes`` entries. ``ValueError`` names the first fault."""
    sections = route_entries(routes, list_key="routes", name_key="key", schema=_ROUTES_SCHEMA,
                             error=CarbonRoutesConfigError)
    keys = [section["key"] for section in sections]
    if len(set(keys)) != len(keys):
        raise CarbonRoutesConfigError(f"routes: names must be unique, got {', '.join(keys)}")
    return sections


def _identity(spec: Mapping[str, Any], where: str) -> str:
    """What makes two destination entries one destination (one queue, connection, spool)."""
    host, _, port = spec["address"].rpartition(":")
    if not host or not port.isdigit():
        raise CarbonRoutesConfigError(f"{where}.address: {spec['address']!r} is not host:port")
    return (f"{host.strip('[]')}:{port}:{spec.get('instance') or ''}:"
            f"{'pickle' if spec.get('pickle') else ''}")


def _same_spool(destination: Destination, spec: Mapping[str, Any]) -> bool:
    if not spec.get("spool"):
        return destination.spool_dir is None
    return destination.spool_dir is not None \
        and destination.spool_max_bytes == int(spec["spool_max_bytes"])


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
