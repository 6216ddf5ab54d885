"""The ``statsd_relay`` forwarder: every raw line to its owner in each destination group.

A :class:`~forwarders.RelayForwarder`. The receive thread calls :meth:`submit_lines` once per
datagram; it only routes: it looks the line's hash key up in a cache (key -> owner) and appends
the line to that backend's pending list, under a lock taken once per datagram. The sender
thread (the base class's) runs a round every ``send_interval``: it takes the pending lists,
moves them into each backend's bounded byte queue (dropping and counting what does not fit)
and sends without blocking. Health (send failures, optional TCP probes on a third thread)
decides which backends are dead; with ``dead_backend_policy: reroute`` their keys go to the
next owner until they recover. JSON input arrives already made into statsd lines by the receive
path (``from_json``); ``json_lines: reject`` refuses those.

Runtime routes (:meth:`routes`, :meth:`apply_routes`): a route is a destination group, in the
schema of one ``groups`` entry. A new list is validated and built outside the lock, then the
groups, routers, pending lists and route cache are swapped under it, between two datagrams.
A backend still named by some group keeps its object (queue, connection, counters); one no
longer named is retired: the sender thread keeps pumping its queue until it is empty (or the
relay closes) and then closes it.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from forwarders.base import ForwarderContext
from forwarders.relay import RelayForwarder
from forwarders.schema import fill_defaults
from forwarders.statsd_relay.backend import Backend
from forwarders.statsd_relay.groups import BackendSlot, Group, build_groups
from forwarders.statsd_relay.schema import CONFIG_SCHEMA

__all__ = ["StatsdRelayForwarder"]

_LOG_EVERY = 10.0

# A route is what the cache remembers for one hash key in the general path: for each group
# that takes the line, (append to the owner's pending list, group, rerouted?), and for each
# group that does not, (group, counter to bump).
Action = tuple[Callable[[bytes], None], Group, bool]
Route = tuple[tuple[Action, ...], tuple[tuple[Group, str], ...]]


class StatsdRelayForwarder(RelayForwarder):
    """Relays raw statsd lines to backends chosen by consistent hash; see docs/relay.md."""

    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = CONFIG_SCHEMA
    ROUTES_KEY: ClassVar[str] = "groups"
    TOTALS: ClassVar[tuple[str, ...]] = (
        *RelayForwarder.TOTALS, "not_relayable", "json_converted", "internal_errors",
        "dead_backend_changes", "backend.*.enqueued_lines", "backend.*.relayed_lines",
        "backend.*.bytes_sent", "backend.*.datagrams_sent", "backend.*.dropped_*",
        "backend.*.send_errors", "backend.*.connects", "backend.*.connect_failures",
        "group.*")
    LEVELS: ClassVar[tuple[str, ...]] = (*RelayForwarder.LEVELS, "backend.*.queued_bytes",
                                         "backend.*.failing")

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        super().__init__(name, config, context)
        settings = self.config
        self.round_interval = float(settings["send_interval"])
        self._group_sections = _named(settings["groups"])
        self.groups, slots = build_groups(self._group_sections)
        self.backends = [self._new_backend(slot) for slot in slots]
        self._retired: list[Backend] = []
        self._opened = False
        self._by_tags = settings["hash_key"] == "name_and_tags"
        self._convert_json = settings["json_lines"] == "convert"
        self._max_cache = int(settings["max_route_cache"])
        self._health_interval = float(settings["health_check_interval"])
        self._pending: list[list[bytes]] = [[] for _ in self.backends]
        self._appenders = [pending.append for pending in self._pending]
        self._lock = threading.Lock()
        self._cache: dict[bytes, Any] = {}
        self._routes: dict[tuple[Any, ...], Route] = {}
        self._dead: frozenset[int] = frozenset()
        self._plain = self._is_plain(self.groups)
        self._fast = self._plain
        self._health: threading.Thread | None = None
        self._last_log = 0.0
        self._unlogged = 0
        self.counters.update({"not_relayable": 0, "json_converted": 0, "internal_errors": 0,
                              "dead_backend_changes": 0})

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self._health_interval > 0 and not self.context.debug_mode:
            self._health = threading.Thread(target=self._health_loop,
                                            name=f"relay-health-{self.name}", daemon=True)
            self._health.start()

    def _new_backend(self, slot: BackendSlot) -> Backend:
        settings = self.config
        return Backend(slot.address, queue_bytes=settings["queue_bytes"],
                       max_datagram_bytes=settings["max_datagram_bytes"],
                       connect_timeout=settings["connect_timeout"],
                       backoff_min=settings["reconnect_backoff_min"],
                       backoff_max=settings["reconnect_backoff_max"],
                       dead_after=settings["dead_after"], health_port=slot.health_port)

    def _is_plain(self, groups: list[Group]) -> bool:
        return (len(groups) == 1 and not self._by_tags and not groups[0].rewrites
                and groups[0].filter is None and groups[0].blacklist is None)

    def open(self) -> None:
        self._opened = True
        self._open_backends(self.backends)

    def _open_backends(self, backends: list[Backend]) -> None:
        for backend in backends:
            try:
                backend.open()
            except OSError as exc:  # unresolvable now: retried with backoff by the sender
                self.log.warning("relay %s: backend %s not reachable yet: %s", self.name,
                                 backend.address.key, exc)

    def pending(self) -> int:
        with self._lock:
            waiting = sum(len(pending) for pending in self._pending)
        return waiting + sum(backend.queued_lines() for backend in self.backends + self._retired)

    def discard(self) -> int:
        with self._lock:
            left = sum(len(pending) for pending in self._pending)
            for pending in self._pending:
                pending.clear()
        return left + sum(backend.discard_queue() for backend in self.backends + self._retired)

    def shutdown(self, timeout: float) -> int:
        if self._health is not None:
            self._health.join(timeout + 0.5)  # the stop event set by close() ends its wait
        for backend in self.backends + self._retired:
            backend.close()
        return 0

    # -- runtime routes (the RelayForwarder hook) -----------------------------------------
    def routes(self) -> list[dict[str, Any]]:
        """The destination groups now in use, each a ``groups`` entry with its ``name``."""
        return copy.deepcopy(self._group_sections)

    def apply_routes(self, routes: list[dict[str, Any]]) -> None:
        sections = _validated_groups(routes)
        groups, slots = build_groups(sections)  # ValueError: a bad regex, weight, backend
        names = [group.name for group in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"groups: names must be unique, got {', '.join(names)}")
        kept = {backend.address: backend for backend in self.backends}
        backends = [kept.get(slot.address) or self._new_backend(slot) for slot in slots]
        fresh = [b for b in backends if b.address not in kept]
        if self._opened:
            self._open_backends(fresh)
        old_counters = {group.name: group.counters for group in self.groups}
        for group in groups:  # a group that stays keeps counting from where it was
            group.counters = old_counters.get(group.name, group.counters)
        with self._lock:
            pending = dict(zip((b.address for b in self.backends), self._pending, strict=True))
            retired = [b for b in self.backends if b not in backends]
            self._pending = [pending.pop(b.address, []) for b in backends]
            self._appenders = [lines.append for lines in self._pending]
            leftovers = list(pending.items())
            self.backends = backends
            self.groups = groups
            self._group_sections = sections
            self._plain = self._is_plain(groups)
            self._fast = self._plain
            self._cache = {}
            self._routes = {}
            self._dead = frozenset()
            self._retired.extend(retired)
        by_address = {b.address: b for b in retired}
        for address, lines in leftovers:  # lines routed before the swap still go out
            if lines:
                by_address[address].enqueue(lines)
        self.log.info("relay %s: routes now %s", self.name,
                      "; ".join(f"{g.name} -> {len(g.backend_indexes)} backends" for g in groups))

    def _pump_retired(self, now: float) -> None:
        for backend in list(self._retired):
            backend.pump(now)
            if not backend.queued_lines():
                backend.close()
                self._retired.remove(backend)

    def stats(self) -> dict[str, float]:
        result = super().stats()
        result["sent"] = sum(b.counters["relayed_lines"] for b in self.backends)
        for backend in self.backends:
            for stat, value in backend.stats().items():
                result[f"backend.{backend.address.stat_key}.{stat}"] = value
        for group in self.groups:
            for stat, value in group.counters.items():
                result[f"group.{group.name}.{stat}"] = value
        return result

    def owners(self, name: bytes, tags: bytes = b"") -> list[tuple[str, str | None, int, str]]:
        """Where a metric goes when every backend is alive: for each group, (group name,
        backend ``host:port:proto`` or None, slot index or -1, why not: "" or the counter).
        ``tags`` is the DogStatsD tag text (``k:v,k2:v2``), used with ``hash_key:
        name_and_tags``. What ``tools/stathasher.py`` prints."""
        hash_tags = b""
        if self._by_tags and tags:
            hash_tags = b"|#" + b",".join(sorted(tags.split(b",")))
        result: list[tuple[str, str | None, int, str]] = []
        for group in self.groups:
            reason = group.accepts(name)
            if reason is not None:
                result.append((group.name, None, -1, reason))
                continue
            hashed = group.prefix + name + group.suffix if group.hash_rewritten_name else name
            slot = group.router.owner_slot(hashed + hash_tags)
            backend = self.backends[group.router.slot_backend[slot]]
            result.append((group.name, backend.address.key, slot, ""))
        return result

    # -- receive thread -------------------------------------------------------------------
    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        """Route one datagram's lines to their owners' pending lists; never blocks for long
        (the lock is only ever held for one datagram or one swap of the pending lists)."""
        if from_json:
            if not self._convert_json:
                for line in lines:
                    self._not_relayable(line)
                return False
            self.counters["json_converted"] += len(lines)
        with self._lock:
            if not self.admit(len(lines)):
                return False
            get = self._cache.get
            # try costs nothing in 3.11 until it catches: a bug costs one line, not the rest
            if self._fast:
                for line in lines:
                    try:
                        i = line.find(b":")
                        if i > 0:
                            append = get(line[:i])
                            if append is None:
                                append = self._resolve_plain(line[:i])
                            append(line)
                        elif line:
                            self._not_relayable(line)
                    except Exception:
                        self._internal_error(line)
            else:
                for line in lines:
                    try:
                        i = line.find(b":")
                        if i > 0:
                            self._dispatch(line, i)
                        elif line:
                            self._not_relayable(line)
                    except Exception:
                        self._internal_error(line)
        self.counters["submitted"] += len(lines)
        return True

    def _resolve_plain(self, name: bytes) -> Callable[[bytes], None]:
        """Cache miss in the one-group, no-rewrite path: the owner's append."""
        if len(self._cache) >= self._max_cache:
            self._cache.clear()
        handler = self._appenders[self._owner(self.groups[0], name)[0]]
        self._cache[name] = handler
        return handler

    def _dispatch(self, line: bytes, i: int) -> None:
        """The general path: filters, several groups, rewrites, tags in the key, reroutes."""
        name = line[:i]
        tags = b""
        if self._by_tags:
            j = line.find(b"|#", i)
            if j > 0:
                k = line.find(b"|", j + 2)
                tags = line[j:k] if k > 0 else line[j:]
        key = name + tags
        route = self._cache.get(key)
        if route is None:
            route = self._resolve(name, tags)
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            self._cache[key] = route
        actions, skips = route
        for append, group, rerouted in actions:
            if group.rewrites:
                append(_rewrite(group, line, i))
            else:
                append(line)
            if rerouted:
                group.counters["rerouted_lines"] += 1
        for group, reason in skips:
            group.counters[reason] += 1

    def _resolve(self, name: bytes, raw_tags: bytes) -> Route:
        hash_tags = b""
        if raw_tags:
            hash_tags = b"|#" + b",".join(sorted(raw_tags[2:].split(b",")))
        actions: list[tuple[int, int, bool]] = []
        skips: list[tuple[int, str]] = []
        for group in self.groups:
            reason = group.accepts(name)
            if reason is not None:
                skips.append((group.index, reason))
                continue
            hashed = name
            if group.hash_rewritten_name:
                hashed = group.prefix + name + group.suffix
            owner, rerouted = self._owner(group, hashed + hash_tags)
            actions.append((owner, group.index, rerouted))
        signature = (tuple(actions), tuple(skips))
        route = self._routes.get(signature)
        if route is None:  # routes are shared by every key that goes the same way
            route = (
                tuple((self._appenders[b], self.groups[g], r) for b, g, r in actions),
                tuple((self.groups[g], reason) for g, reason in skips),
            )
            self._routes[signature] = route
        return route

    def _owner(self, group: Group, key: bytes) -> tuple[int, bool]:
        owner = group.router.owner(key)
        if group.reroute and owner in self._dead:
            fallback = group.router.fallback(key, self._dead)
            if fallback is not None:
                return fallback, True
        return owner, False

    def _internal_error(self, line: bytes) -> None:
        self.counters["internal_errors"] += 1
        self.log.exception("relay %s: bug while routing %r (line dropped)", self.name,
                           line[:120])

    def _not_relayable(self, line: bytes) -> None:
        self.counters["not_relayable"] += 1
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self.log.warning("relay %s: dropped %d lines that are not relayable, e.g. %r",
                             self.name, self._unlogged + 1, line[:120])
            self._last_log = now
            self._unlogged = 0
        else:
            self._unlogged += 1

    # -- sender thread --------------------------------------------------------------------
    def _take_pending(self) -> list[tuple[Backend, list[bytes]]]:
        taken = []
        with self._lock:
            self.taken()
            for backend, pending in zip(self.backends, self._pending, strict=True):
                if pending:
                    taken.append((backend, pending.copy()))
                    pending.clear()
        return taken

    def send_round(self, now: float) -> None:
        for backend, lines in self._take_pending():
            if self.context.debug_mode:
                for line in lines:
                    self.log.info("debug_mode, not sent to %s: %r", backend.address.key,
                                  line.decode("utf-8", "replace"))
                continue
            backend.enqueue(lines)
        if self.context.debug_mode:
            return
        for backend in self.backends:
            backend.pump(now)
        if self._retired:
            self._pump_retired(now)
        self._update_dead(now)

    def _update_dead(self, now: float) -> None:
        backends = self.backends
        dead = frozenset(i for i, b in enumerate(backends) if not b.alive(now))
        if dead == self._dead:
            return
        for i in sorted(dead - self._dead):
            self.log.warning("relay %s: backend %s is dead (%s)", self.name,
                             backends[i].address.key, self._policy_text(i))
        for i in sorted(self._dead - dead):
            self.log.warning("relay %s: backend %s is back", self.name,
                             backends[i].address.key)
        rerouting = any(g.reroute for g in self.groups)
        with self._lock:
            if self.backends is not backends:  # routes changed meanwhile: next round decides
                return
            self._dead = dead
            if rerouting:  # owners changed: forget every cached route
                self._cache = {}
                self._routes = {}
                self._fast = self._plain and not dead
        self.counters["dead_backend_changes"] += 1

    def _policy_text(self, backend: int) -> str:
        policies = {("reroute" if g.reroute else "hold") for g in self.groups
                    if backend in g.backend_indexes}
        if policies == {"hold"}:
            return "holding its lines in its queue"
        if policies == {"reroute"}:
            return "rerouting its keys to their next owners"
        return "held by some groups, rerouted by others"

    # -- health thread --------------------------------------------------------------------
    def _health_loop(self) -> None:
        while not self._stop.wait(self._health_interval):
            for backend in self.backends:
                port = backend.health_port
                if port is None and backend.address.protocol == "tcp":
                    port = backend.address.port
                if port is None:
                    continue
                backend.probe_ok = _tcp_probe(backend.address.host, port,
                                              backend.connect_timeout)


_GROUPS_SCHEMA: dict[str, Any] = CONFIG_SCHEMA["properties"]["groups"]


def _named(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups with their default names written in: a route is known by its name."""
    return [{**section, "name": section.get("name") or f"group{i}"}
            for i, section in enumerate(sections)]


def _validated_groups(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import jsonschema  # at a route change only: a daemon keeps it out of its RSS otherwise

    sections = copy.deepcopy(routes)
    validator = jsonschema.Draft202012Validator(
        _GROUPS_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(sections), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "groups" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                   for p in first.path)
        raise ValueError(f"{where}: {first.message}")
    fill_defaults(_GROUPS_SCHEMA, sections)
    return _named(sections)


def _rewrite(group: Group, line: bytes, i: int) -> bytes:
    line = group.prefix + line[:i] + group.suffix + line[i:]
    if group.append_tags:
        line += (b"," if b"|#" in line else b"|#") + group.append_tags
    return line


def _tcp_probe(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

