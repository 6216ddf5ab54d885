"""Forwarders: where each flush (or each raw line, for relays) goes.

Built-in forwarders are listed in ``BUILTIN_FORWARDERS``; third parties register a
:class:`Forwarder` subclass under the ``pystatsd.forwarders`` entry point group. Only the
forwarders a config names are imported.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from forwarders.base import COMMON_SCHEMA_PROPERTIES, Forwarder, ForwarderContext, snapshot_records

__all__ = [
    "BUILTIN_FORWARDERS",
    "COMMON_SCHEMA_PROPERTIES",
    "Forwarder",
    "ForwarderContext",
    "UnknownForwarder",
    "known_forwarder_names",
    "load_forwarder_class",
    "snapshot_records",
]

ENTRY_POINT_GROUP = "pystatsd.forwarders"

BUILTIN_FORWARDERS: dict[str, str] = {
    "console": "forwarders.console:ConsoleForwarder",
    "file": "forwarders.file:FileForwarder",
    "kafka": "forwarders.kafka:KafkaForwarder",
    "statsd_relay": "forwarders.statsd_relay:StatsdRelayForwarder",
}


class UnknownForwarder(LookupError):
    """A config names a forwarder type that is neither built in nor registered."""


def _third_party() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_forwarder_names() -> list[str]:
    """Every forwarder type this installation can run, built-in and registered."""
    return sorted({**_third_party(), **BUILTIN_FORWARDERS})


def load_forwarder_class(type_name: str) -> type[Forwarder]:
    """Given a forwarder type name, import and return its class.

    Raises :class:`UnknownForwarder` listing the known names when the type does not exist, and
    ``TypeError`` when the object registered under that name is not a Forwarder subclass."""
    target = BUILTIN_FORWARDERS.get(type_name) or _third_party().get(type_name)
    if target is None:
        raise UnknownForwarder(
            f"unknown forwarder type {type_name!r}; known: {', '.join(known_forwarder_names())}"
        )
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Forwarder)):
        raise TypeError(f"forwarder {type_name!r} ({target}) is not a Forwarder subclass")
    return cls
