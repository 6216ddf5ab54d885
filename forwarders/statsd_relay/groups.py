"""Destination groups: which backends a group hashes over, and what it does to a line first.

A group (lyft's ``duplicate_to``) has its own hash scheme and backend slots, an ingress
``filter`` and ``blacklist`` on the metric name, and a name rewrite (``prefix``/``suffix``) and
tag append. :func:`build_groups` turns the validated config into :class:`Group` objects that
share one :class:`~forwarders.statsd_relay.backend.Backend` per distinct ``host:port:proto``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from forwarders.statsd_relay.backend import BackendAddress
from forwarders.statsd_relay.hashing import Router, make_router
from forwarders.statsd_relay.schema import BACKEND_DEFAULTS

__all__ = ["BackendSlot", "Group", "build_groups", "parse_backend"]


@dataclass(frozen=True)
class BackendSlot:
    """One configured entry of a group's backend list."""

    address: BackendAddress
    instance: str | None = None
    weight: int = 1
    health_port: int | None = None


def parse_backend(entry: str | Mapping[str, Any]) -> BackendSlot:
    """Given ``host:port``, ``host:port:udp|tcp``, ``[v6]:port[:proto]`` or an object, return
    the slot it describes; raise ``ValueError`` naming the bad part."""
    if not isinstance(entry, str):
        # Objects inside a oneOf get no defaults filled in: take them from the schema itself.
        protocol = str(entry.get("protocol", BACKEND_DEFAULTS["protocol"]))
        address = BackendAddress(str(entry["host"]), int(entry["port"]), protocol)
        weight = int(entry.get("weight", BACKEND_DEFAULTS["weight"]))
        return BackendSlot(address, entry.get("instance"), weight, entry.get("health_port"))
    text = entry.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"backend {entry!r}: expected [ipv6]:port[:proto]")
        parts = [host, *rest[1:].split(":")]
    else:
        parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"backend {entry!r}: expected host:port or host:port:udp|tcp")
    try:
        port = int(parts[1])
    except ValueError:
        raise ValueError(f"backend {entry!r}: port {parts[1]!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"backend {entry!r}: port {port} out of range")
    protocol = parts[2].lower() if len(parts) == 3 else "udp"
    if protocol not in ("udp", "tcp"):
        raise ValueError(f"backend {entry!r}: protocol must be udp or tcp, not {parts[2]!r}")
    return BackendSlot(BackendAddress(parts[0], port, protocol))


@dataclass
class Group:
    """One destination group, resolved: backend indexes refer to the forwarder's backend list."""

    index: int
    name: str
    router: Router
    prefix: bytes
    suffix: bytes
    append_tags: bytes
    hash_rewritten_name: bool
    filter: re.Pattern[bytes] | None
    blacklist: re.Pattern[bytes] | None
    reroute: bool
    backend_indexes: list[int]
    counters: dict[str, int] = field(default_factory=lambda: {
        "filtered_lines": 0, "rejected_lines": 0, "rerouted_lines": 0})

    @property
    def rewrites(self) -> bool:
        return bool(self.prefix or self.suffix or self.append_tags)

    def accepts(self, name: bytes) -> str | None:
        """None when a metric of this name enters the group, else the counter that says why
        not (``filtered_lines`` or ``rejected_lines``)."""
        if self.filter is not None and self.filter.search(name) is None:
            return "filtered_lines"
        if self.blacklist is not None and self.blacklist.search(name) is not None:
            return "rejected_lines"
        return None


def _compile(pattern: str | None, where: str) -> re.Pattern[bytes] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern.encode())
    except re.error as exc:
        raise ValueError(f"{where}: not a valid regular expression: {exc}") from None


def build_groups(config: Sequence[Mapping[str, Any]]) -> tuple[list[Group], list[BackendSlot]]:
    """Given the ``groups`` config, return the groups and the distinct backends they use
    (index = backend number; the first slot naming a backend supplies its health port)."""
    backends: dict[BackendAddress, int] = {}
    first_slots: list[BackendSlot] = []
    groups: list[Group] = []
    for g_index, section in enumerate(config):
        where = f"groups[{g_index}]"
        scheme = section["hash"]
        slots = [parse_backend(entry) for entry in section["backends"]]
        for slot in slots:
            if slot.weight != 1 and scheme != "ketama":
                raise ValueError(f"{where}: weight is for the ketama scheme; with {scheme} "
                                 "list a backend several times to give it more slots")
        slot_backend = []
        for slot in slots:
            if slot.address not in backends:
                backends[slot.address] = len(first_slots)
                first_slots.append(slot)
            slot_backend.append(backends[slot.address])
        addresses = [f"{s.address.host}:{s.address.port}" for s in slots]
        router = make_router(scheme, slot_backend, addresses, [s.weight for s in slots],
                             [s.instance for s in slots])
        tags = section["append_tags"]
        groups.append(Group(
            index=g_index,
            name=section.get("name") or f"group{g_index}",
            router=router,
            prefix=section["prefix"].encode(),
            suffix=section["suffix"].encode(),
            append_tags=tags.encode(),
            hash_rewritten_name=bool(section["hash_rewritten_name"]),
            filter=_compile(section.get("filter"), f"{where}.filter"),
            blacklist=_compile(section.get("blacklist"), f"{where}.blacklist"),
            reroute=section["dead_backend_policy"] == "reroute",
            backend_indexes=sorted(set(slot_backend)),
        ))
    return groups, first_slots
