"""The schema of a forwarder section, and filling its defaults.

A section is checked against the forwarder's own ``CONFIG_SCHEMA`` plus the keys every section
has (``type``, ``queue_size``). Defaults live in those schemas only: :func:`fill_defaults` is
how both the daemon's config loader and a forwarder built directly (a test, a tool) get them,
so no forwarder ever needs a second default in its code."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["COMMON_SCHEMA_PROPERTIES", "fill_defaults", "section_schema", "with_defaults"]

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
