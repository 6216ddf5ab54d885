"""The ``statsite_proxy`` relay: statsite's ASCII and binary commands sharded over statsite
servers on libketama's weighted ring, as statsite-proxy places them.

Each submitted item is one command as the receive path cut it: an ASCII line (without its
newline) or a whole binary frame (starting with the magic byte 0xaa). The hash key is what
statsite-proxy hashes: an ASCII line's text before its first ``:``, a binary frame's key
without its NUL. A binary frame is sent whole to its key's owner, an ASCII line with a newline
added. statsite-proxy itself parses binary frames but never forwards them (its routing call is
commented out); here they go where their key's ASCII lines go, so one statsite aggregates both.

A line without ``:`` or a frame too short for its own key is refused and counted
(``refused``). Each server has a bounded queue, a TCP connection (as statsite-proxy's) with
reconnect backoff; no spool (statsite-proxy has none, and counters or timers replayed late
would land in the wrong interval anyway).

Runtime routes (the :class:`~forwarders.RelayForwarder` hook): a route is one server, named by
its address, ``{"name": "ip:port", "weight": N}``; a new list (in ring order) rebuilds the ring
between two rounds, after what earlier datagrams brought has been placed on the old one. A
server still listed keeps its connection and queue; a removed one keeps sending what it holds
and then closes (while it cannot be reached it keeps retrying until the relay closes, then its
lines are counted lost: there is no spool).
"""

from __future__ import annotations

import copy
import struct
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from forwarders import ForwarderContext, RelayForwarder
from forwarders.carbon_routes.destination import Destination
from forwarders.runtime_routes import by_identity, hook_routes, retire, route_entries
from forwarders.schema import backend_queue_lines, reconnect_properties, relay_queue_size
from forwarders.statsd_relay.hashing import KetamaRouter

__all__ = ["StatsiteProxyConfigError", "StatsiteProxyForwarder", "command_key"]

_MAGIC = 0xAA
_HEADER = struct.Struct("<BBH")
_SET_TYPE = 4


class StatsiteProxyConfigError(ValueError):
    """A section that cannot work, with the key that says why."""


def command_key(command: bytes) -> bytes | None:
    """The ring key of one command, or None when it has none."""
    if not command:
        return None
    if command[0] != _MAGIC:
        key, colon, _ = command.partition(b":")
        return key if colon and key else None
    if len(command) < _HEADER.size:
        return None
    _, kind, key_length = _HEADER.unpack_from(command)
    start = _HEADER.size + (2 if kind == _SET_TYPE else 8)
    key = command[start:start + key_length]
    if key_length < 2 or len(key) != key_length:
        return None
    return key[:-1]


class StatsiteProxyForwarder(RelayForwarder):
    INPUT_FORMAT: ClassVar[str] = "statsite"
    """The listener format whose payloads this relay takes (pystatsd.wire_formats)."""
    ROUTES_KEY: ClassVar[str] = "servers"
    ROUTE_NAME_KEY: ClassVar[str] = "address"
    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["servers"],
        "properties": {
            "queue_size": relay_queue_size(4096, "commands"),
            "servers": {
                "type": "array", "minItems": 1,
                "description": "statsite servers in the order of statsite-proxy's servers file "
                               "(the order and the text of each address shape the ring).",
                "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["address", "weight"],
                    "properties": {
                        "address": {"type": "string",
                                    "description": "`ip:port`, exactly as in servers.conf."},
                        "weight": {"type": "integer", "minimum": 1,
                                   "description": "The servers file's weight."},
                    },
                },
            },
            "queue_lines": backend_queue_lines("Commands", "for each server"),
            **reconnect_properties(
                backoff_min=0.5, backoff_max=5.0,
                backoff_max_note=" (statsite-proxy's BACKEND_RETRY_TIMEOUT is 5 s)"),
        },
    }
    TOTALS: ClassVar[tuple[str, ...]] = (
        *RelayForwarder.TOTALS, "refused", "server.*.enqueued", "server.*.sent",
        "server.*.dropped_queue_full", "server.*.dropped_partial", "server.*.connects",
        "server.*.connect_failures", "server.*.send_errors", "server.*.spooled",
        "server.*.spool_sent", "server.*.spool_dropped")
    LEVELS: ClassVar[tuple[str, ...]] = (*RelayForwarder.LEVELS, "server.*.queued",
                                         "server.*.spool_bytes", "server.*.up")

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        super().__init__(name, config, context)
        config = self.config
        self.counters["refused"] = 0
        self._routing = threading.Lock()  # held by each round and by a route change
        self._retired: list[Destination] = []  # removed at runtime, still sending
        self._sections: list[dict[str, Any]] = copy.deepcopy(list(config["servers"]))
        self._servers, self._ring = self._build(self._sections, {}, f"forwarders.{name}")

    def _build(self, sections: list[dict[str, Any]], known: dict[str, Destination],
               where: str) -> tuple[list[Destination], KetamaRouter]:
        """The servers (``known`` ones by address reused) and their ring."""
        servers = []
        for index, server in enumerate(sections):
            address = server["address"]
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise StatsiteProxyConfigError(f"{where}.servers[{index}].address: "
                                               f"{address!r} is not ip:port")
            servers.append(known.get(address) or Destination(
                host.strip("[]"), int(port), instance=None, pickle=False, raw=True,
                queue_lines=int(self.config["queue_lines"]),
                backoff_min=float(self.config["backoff_min"]),
                backoff_max=float(self.config["backoff_max"]),
                connect_timeout=float(self.config["connect_timeout"])))
            servers[-1].identity = address
        addresses = [server["address"] for server in sections]
        if len(set(addresses)) != len(addresses):
            raise StatsiteProxyConfigError(f"{where}.servers: addresses must be unique, got "
                                           f"{', '.join(addresses)}")
        weights = [int(server["weight"]) for server in sections]
        return servers, KetamaRouter(range(len(addresses)), addresses, weights)

    def owner(self, key: bytes) -> int:
        """The index (in ``servers``) of the server that owns ``key``."""
        return self._ring.owner(key)

    def shutdown(self, timeout: float) -> int:
        for server in [*self._servers, *self._retired]:
            server.close()
        return 0

    # -- runtime routes (the RelayForwarder hook) -----------------------------------------
    def routes(self) -> list[dict[str, Any]]:
        """The servers now on the ring, in ring order: ``{"name": address, "weight": N}``."""
        return hook_routes(self._sections, "address")

    def apply_routes(self, routes: list[dict[str, Any]]) -> None:
        sections = _validated_servers(routes)
        where = f"forwarders.{self.name}"
        with self._routing:
            self._place(self.take_batches())  # what came before the change: the old ring
            known = by_identity([*self._servers, *self._retired])
            servers, ring = self._build(sections, known, where)
            self._retired, removed = retire(self._servers, servers, self._retired)
            self._servers, self._ring, self._sections = servers, ring, sections
        self.log.info("statsite proxy %s: servers now %s", self.name,
                      ", ".join(f"{s['address']} (weight {s['weight']})" for s in sections))
        for server in removed:
            self.log.info("statsite proxy %s: server %s:%d removed; it sends the %d commands "
                          "it holds, then closes%s", self.name, server.host, server.port,
                          server.pending(), "" if server.connected else
                          " (not connected now: retried until it answers or the relay closes, "
                          "no spool)")

    def stats(self) -> dict[str, float]:
        stats: dict[str, float] = {**super().stats()}
        for server in [*self._servers, *self._retired]:
            for key, value in server.stats().items():
                stats[f"server.{server.key}.{key}"] = value
        return stats

    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        return self.buffer_batch(lines)

    def send_round(self, now: float) -> None:
        with self._routing:
            self._place(self.take_batches())
            self._pump(now)

    def _place(self, batches: list[list[bytes]]) -> None:
        for commands in batches:
            for command in commands:
                key = command_key(command)
                if key is None:
                    self.counters["refused"] += 1
                    continue
                item = command if command[0] == _MAGIC else command + b"\n"
                self._servers[self._ring.owner(key)].enqueue(item)

    def _pump(self, now: float) -> None:
        for server in [*self._servers, *self._retired]:
            sent = server.log_unsent(self.log) if self.context.debug_mode else server.pump(now)
            self.counters["sent"] += sent
        for server in list(self._retired):
            if not server.pending():  # everything it held is written: it may go
                server.close()
                self._retired.remove(server)

    def pending(self) -> int:
        servers = [*self._servers, *self._retired]
        return self.buffered_lines + sum(server.pending() for server in servers)

    def discard(self) -> int:
        servers = [*self._servers, *self._retired]
        return self.discard_buffered() + sum(server.discard() for server in servers)


_SERVERS_SCHEMA: dict[str, Any] = StatsiteProxyForwarder.CONFIG_SCHEMA["properties"]["servers"]


def _validated_servers(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hook's objects (``name`` for ``address``) checked against the section's schema:
    ``servers`` entries. ``ValueError`` names the first fault."""
    return route_entries(routes, list_key="servers", name_key="address",
                         schema=_SERVERS_SCHEMA, error=StatsiteProxyConfigError)
