"""Forwarders: where each flush (or each raw line, for relays) goes.

Everything a forwarder, built-in or third-party, needs is importable from here: the two base
classes, the context the daemon passes, the snapshot and series types, the record helpers and
the schema helpers. A forwarder imports nothing else of pystatsd. The contract (lifecycle,
queues, stats, reload) is written in :mod:`forwarders.base`; ``forwarders.contract`` is a test
suite any forwarder can run on itself. Built-in types are listed in ``BUILTIN_FORWARDERS``;
third parties register under the entry-point group ``pystatsd.forwarders``.
"""

from __future__ import annotations

from forwarders.aggregate import AggregateForwarder
from forwarders.base import Forwarder, ForwarderContext, NeededPath, StatKind
from forwarders.records import event_record, series_record, snapshot_records
from forwarders.registry import (
    BUILTIN_FORWARDERS,
    ENTRY_POINT_GROUP,
    ForwarderClash,
    ForwarderSource,
    Registry,
    UnknownForwarder,
    discover,
    known_forwarder_names,
    load_forwarder_class,
)
from forwarders.relay import RelayForwarder
from forwarders.schema import COMMON_SCHEMA_PROPERTIES, fill_defaults, section_schema
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, METRIC_TYPES, SET, TIMER, TRACE, Tags
from pystatsd.snapshot import EVENT, SERVICE_CHECK, Event, SeriesStats, Snapshot

__all__ = [
    "BUILTIN_FORWARDERS",
    "COMMON_SCHEMA_PROPERTIES",
    "COUNTER",
    "ENTRY_POINT_GROUP",
    "GAUGE",
    "HISTOGRAM",
    "METRIC_TYPES",
    "SET",
    "TIMER",
    "TRACE",
    "AggregateForwarder",
    "Forwarder",
    "ForwarderClash",
    "ForwarderContext",
    "ForwarderSource",
    "NeededPath",
    "Registry",
    "RelayForwarder",
    "SeriesStats",
    "Snapshot",
    "StatKind",
    "Tags",
    "UnknownForwarder",
    "discover",
    "fill_defaults",
    "known_forwarder_names",
    "load_forwarder_class",
    "section_schema",
    "series_record",
    "event_record",
    "Event",
    "EVENT",
    "SERVICE_CHECK",
    "snapshot_records",
]
