"""The structured record of a series: what the console and file forwarders print and the
Kafka forwarder's ``json`` format sends. One definition, so every output that claims to be
"the record" is the same record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pystatsd.snapshot import SeriesStats, Snapshot

__all__ = ["series_record", "snapshot_records"]


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


def snapshot_records(snapshot: Snapshot) -> Iterator[dict[str, Any]]:
    """Given a snapshot, yield :func:`series_record` of each of its series."""
    for series in snapshot.series:
        yield series_record(series, snapshot)
