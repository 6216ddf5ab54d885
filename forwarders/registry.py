"""Which forwarder types exist, and where each comes from.

Built-ins are the table below; third parties register a forwarder class under the entry-point
group ``pystatsd.forwarders`` (``name = "module:Class"``). A name that two sources claim (an
entry point named like a built-in, or two distributions registering one name) is a clash: the
name is refused, with one line naming both sources, rather than one silently shadowing the
other. Only the forwarders a config names are imported. Discovery is repeated on each call (a
few milliseconds), so a plug-in installed while the daemon runs is found by the next reload.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from forwarders.base import Forwarder

__all__ = [
    "BUILTIN_FORWARDERS",
    "ENTRY_POINT_GROUP",
    "ForwarderClash",
    "ForwarderSource",
    "Registry",
    "UnknownForwarder",
    "discover",
    "known_forwarder_names",
    "load_forwarder_class",
]

ENTRY_POINT_GROUP = "pystatsd.forwarders"

BUILTIN_FORWARDERS: dict[str, str] = {
    "carbon_routes": "forwarders.carbon_routes:CarbonRoutesForwarder",
    "console": "forwarders.console:ConsoleForwarder",
    "file": "forwarders.file:FileForwarder",
    "graphite": "forwarders.graphite:GraphiteForwarder",
    "kafka": "forwarders.kafka:KafkaForwarder",
    "statsd_relay": "forwarders.statsd_relay:StatsdRelayForwarder",
    "statsite_proxy": "forwarders.statsite_proxy:StatsiteProxyForwarder",
    "prometheus": "forwarders.prometheus:PrometheusForwarder",
}


class UnknownForwarder(LookupError):
    """A config names a forwarder type that is neither built in nor registered."""


class ForwarderClash(LookupError):
    """Two sources claim one forwarder type name; the name is refused."""


@dataclass(frozen=True)
class ForwarderSource:
    """Where the forwarder type ``name`` comes from: ``target`` is ``module:attribute``,
    ``origin`` is ``built-in`` or the registering distribution and its version."""

    name: str
    target: str
    origin: str

    def __str__(self) -> str:
        return f"{self.origin} ({self.target})"


@dataclass(frozen=True)
class Registry:
    """The forwarder types found: usable ones, and refused names with every source claiming
    them."""

    available: dict[str, ForwarderSource]
    clashes: dict[str, tuple[ForwarderSource, ...]]

    def names(self) -> list[str]:
        return sorted({*self.available, *self.clashes})

    def clash_line(self, name: str) -> str:
        sources = self.clashes[name]
        return (f"forwarder type {name!r} is registered more than once and is refused: "
                + " and ".join(str(source) for source in sources))


def discover() -> Registry:
    """Built-ins and the installed entry points, with clashes set apart."""
    claims: dict[str, list[ForwarderSource]] = {
        name: [ForwarderSource(name, target, "built-in")]
        for name, target in BUILTIN_FORWARDERS.items()
    }
    for point in entry_points(group=ENTRY_POINT_GROUP):
        dist = point.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
        source = ForwarderSource(point.name, point.value, origin)
        known = claims.setdefault(point.name, [])
        if source not in known:  # one distribution seen twice on sys.path is one source
            known.append(source)
    available = {name: sources[0] for name, sources in claims.items() if len(sources) == 1}
    clashes = {name: tuple(sources) for name, sources in claims.items() if len(sources) > 1}
    return Registry(available, clashes)


def known_forwarder_names() -> list[str]:
    """Every forwarder type name this installation knows (clashing ones included)."""
    return discover().names()


def load_forwarder_class(type_name: str, registry: Registry | None = None) -> type[Forwarder]:
    """Given a forwarder type name, import and return its class.

    Raises :class:`UnknownForwarder` (listing the known names), :class:`ForwarderClash` (naming
    both sources), ``ImportError`` when its module does not import, and ``TypeError`` when the
    object registered is not a forwarder of one of the two kinds."""
    registry = registry or discover()
    if type_name in registry.clashes:
        raise ForwarderClash(registry.clash_line(type_name))
    source = registry.available.get(type_name)
    if source is None:
        raise UnknownForwarder(
            f"unknown forwarder type {type_name!r}; known: {', '.join(registry.names())}")
    module_name, _, attr = source.target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Forwarder) and cls.KIND):
        raise TypeError(f"forwarder {type_name!r} from {source} is not an AggregateForwarder "
                        "or RelayForwarder subclass")
    return cls
