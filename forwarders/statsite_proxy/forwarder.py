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
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, ClassVar

from forwarders import ForwarderContext, RelayForwarder
from forwarders.carbon_routes.destination import Destination
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
    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["servers"],
        "properties": {
            "queue_size": {"type": "integer", "minimum": 1, "default": 4096,
                           "description": "Datagrams (or TCP chunks) of commands that may wait "
                                          "for the sender thread before new ones are dropped "
                                          "and counted."},
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
            "queue_lines": {"type": "integer", "minimum": 1, "default": 100000,
                            "description": "Commands that may wait per server; past that new "
                                           "ones are dropped and counted."},
            "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 2.0,
                                "description": "Seconds a connect may take."},
            "backoff_min": {"type": "number", "exclusiveMinimum": 0, "default": 0.5,
                            "description": "Seconds before reconnecting after a failure; "
                                           "doubles per failure up to `backoff_max`."},
            "backoff_max": {"type": "number", "exclusiveMinimum": 0, "default": 5.0,
                            "description": "Longest wait between reconnects (statsite-proxy's "
                                           "BACKEND_RETRY_TIMEOUT is 5 s)."},
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
        self._servers: list[Destination] = []
        addresses, weights = [], []
        for index, server in enumerate(config["servers"]):
            host, _, port = server["address"].rpartition(":")
            if not host or not port.isdigit():
                raise StatsiteProxyConfigError(f"forwarders.{name}.servers[{index}].address: "
                                               f"{server['address']!r} is not ip:port")
            self._servers.append(Destination(
                host.strip("[]"), int(port), instance=None, pickle=False, raw=True,
                queue_lines=int(config["queue_lines"]),
                backoff_min=float(config["backoff_min"]),
                backoff_max=float(config["backoff_max"]),
                connect_timeout=float(config["connect_timeout"])))
            addresses.append(server["address"])
            weights.append(int(server["weight"]))
        self._ring = KetamaRouter(range(len(addresses)), addresses, weights)

    def owner(self, key: bytes) -> int:
        """The index (in ``servers``) of the server that owns ``key``."""
        return self._ring.owner(key)

    def shutdown(self, timeout: float) -> int:
        for server in self._servers:
            server.close()
        return 0

    def stats(self) -> dict[str, float]:
        stats: dict[str, float] = {**super().stats()}
        for server in self._servers:
            for key, value in server.stats().items():
                stats[f"server.{server.key}.{key}"] = value
        return stats

    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        return self.buffer_batch(lines)

    def send_round(self, now: float) -> None:
        batches = self.take_batches()
        for commands in batches:
            for command in commands:
                key = command_key(command)
                if key is None:
                    self.counters["refused"] += 1
                    continue
                item = command if command[0] == _MAGIC else command + b"\n"
                self._servers[self._ring.owner(key)].enqueue(item)
        for server in self._servers:
            if self.context.debug_mode:
                while server.queue:
                    self.log.info("debug_mode, not sent to %s:%d: %r", server.host, server.port,
                                  server.queue.popleft())
                    self.counters["sent"] += 1
                continue
            before = server.counters["sent"]
            server.pump(now)
            self.counters["sent"] += server.counters["sent"] - before

    def pending(self) -> int:
        return self.buffered_lines + sum(server.pending() for server in self._servers)

    def discard(self) -> int:
        return self.discard_buffered() + sum(server.discard() for server in self._servers)
