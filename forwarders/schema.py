"""The schema of a forwarder section, and filling its defaults.

A section is checked against the forwarder's own ``CONFIG_SCHEMA`` plus the keys every section
has (``type``, ``queue_size``). Defaults live in those schemas only: :func:`fill_defaults` is
how both the daemon's config loader and a forwarder built directly (a test, a tool) get them,
so no forwarder ever needs a second default in its code.

The options that forwarders with backends of their own share (the relays' datagram queue, a
backend's line queue, connect timeout and reconnect backoff) are declared once here, by
:func:`relay_queue_size`, :func:`backend_queue_lines` and :func:`reconnect_properties`, so
that one option reads and checks alike in every section that has it; each forwarder keeps its
own defaults, which match the program it replaces."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["COMMON_SCHEMA_PROPERTIES", "backend_queue_lines", "fill_defaults",
           "reconnect_properties", "relay_queue_size", "section_schema", "with_defaults"]

COMMON_SCHEMA_PROPERTIES: dict[str, Any] = {
    "type": {
        "type": "string",
        "description": "Which forwarder implementation runs this section; defaults to the "
        "section's own name, so several forwarders of one type can run under different names.",
    },
    "queue_size": {
        "type": "integer",
        "minimum": 1,
        "default": 64,
        "description": "How many flushes (aggregate forwarders) or datagrams' worth of lines "
        "(relay forwarders) may wait for this forwarder before new ones are dropped and counted.",
    },
}


def relay_queue_size(default: int, items: str = "lines") -> dict[str, Any]:
    """A relay's ``queue_size`` (it overrides the common one): what waits between the receive
    thread and the relay's sender thread is whole datagrams, or TCP chunks, of ``items``."""
    return {"type": "integer", "minimum": 1, "default": default,
            "description": f"Datagrams (or TCP chunks) of {items} that may wait for the relay's "
            "sender thread before new ones are dropped and counted."}


def backend_queue_lines(items: str, per: str) -> dict[str, Any]:
    """The bound of one backend's in-memory queue, in ``items`` (capitalised: the
    description's first word), one queue ``per`` backend ("for this destination")."""
    return {"type": "integer", "minimum": 1, "default": 100000,
            "description": f"{items} that may wait in memory {per}; past that new ones are "
            "dropped and counted."}


def reconnect_properties(*, backoff_min: float, backoff_max: float, backoff_max_note: str = "",
                         connects: str = "a connect", retry: str = "reconnecting",
                         key_prefix: str = "") -> dict[str, Any]:
    """``connect_timeout`` and the doubling backoff after a failure,
    ``<key_prefix>backoff_min`` and ``<key_prefix>backoff_max`` (in this order), of a
    forwarder that connects to its backends. ``connects`` and ``retry`` say what is timed and
    what waits; ``backoff_max_note`` (" (...)") whose setting the default copies."""
    longest = f"{key_prefix}backoff_max"
    return {
        "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 2.0,
                            "description": f"Seconds {connects} may take."},
        f"{key_prefix}backoff_min": {
            "type": "number", "exclusiveMinimum": 0, "default": backoff_min,
            "description": f"Seconds before {retry} after a failure; doubles per failure up "
            f"to `{longest}`."},
        longest: {"type": "number", "exclusiveMinimum": 0, "default": backoff_max,
                  "description": f"Longest wait, in seconds, before {retry}{backoff_max_note}."},
    }


def section_schema(own: Mapping[str, Any]) -> dict[str, Any]:
    """The full schema of one forwarder section: ``own`` (a forwarder's ``CONFIG_SCHEMA``)
    with the common keys added; unknown keys are refused unless ``own`` says otherwise. A
    forwarder may override a common key (the relay's ``queue_size`` counts datagrams)."""
    schema = copy.deepcopy(dict(own))
    schema["type"] = "object"
    schema["properties"] = {**copy.deepcopy(COMMON_SCHEMA_PROPERTIES),
                            **copy.deepcopy(dict(own.get("properties", {})))}
    schema.setdefault("additionalProperties", False)
    return schema


def fill_defaults(schema: Mapping[str, Any], instance: Any) -> None:
    """Set every absent property that has a ``default`` in ``schema``, recursively (into
    objects and the items of arrays)."""
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                fill_defaults(sub, instance[key])
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            fill_defaults(schema["items"], item)


def with_defaults(schema: Mapping[str, Any], section: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``section`` with every default of ``schema`` filled in."""
    filled = copy.deepcopy(dict(section))
    fill_defaults(schema, filled)
    return filled
