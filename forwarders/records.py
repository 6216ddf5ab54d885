"""The structured record of a series: what the console and file forwarders print and the
Kafka forwarder's ``json`` format sends. One definition, so every output that claims to be
"the record" is the same record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pystatsd.snapshot import Event, SeriesStats, Snapshot

__all__ = ["event_record", "series_record", "snapshot_records"]


def series_record(series: SeriesStats, snapshot: Snapshot) -> dict[str, Any]:
    """The record of one series of a flush: name, type, tags, stats, interval, host, and the
    client's ``timestamp`` when the series was passed through with it."""
    record = {
        "name": series.name,
        "type": series.type,
        "tags": dict(series.tags),
        "stats": series.stats,
        "interval_start": snapshot.start,
        "interval": snapshot.interval,
        "host": snapshot.host,
    }
    if series.timestamp is not None:
        record["timestamp"] = series.timestamp
    return record


def event_record(event: Event, snapshot: Snapshot) -> dict[str, Any]:
    """The record of a DogStatsD event or service check (docs/schemas/kafka-event.schema.json):
    ``kind`` says which, and tells it from a series record (which has ``type``)."""
    return {
        "kind": event.kind,
        "title": event.title,
        "text": event.text,
        "tags": dict(event.tags),
        "timestamp": event.timestamp,
        "hostname": event.hostname,
        "priority": event.priority,
        "alert_type": event.alert_type,
        "aggregation_key": event.aggregation_key,
        "source_type_name": event.source_type_name,
        "status": event.status,
        "interval_start": snapshot.start,
        "host": snapshot.host,
    }


def snapshot_records(snapshot: Snapshot) -> Iterator[dict[str, Any]]:
    """Given a snapshot, yield :func:`series_record` of each of its series, then
    :func:`event_record` of each of its events."""
    for series in snapshot.series:
        yield series_record(series, snapshot)
    for event in snapshot.events:
        yield event_record(event, snapshot)
