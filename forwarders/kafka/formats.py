"""Turning one series of a flush into one Kafka message value, in each supported format.

Every encoder takes ``(series, snapshot)`` and returns the message value as bytes, or ``None``
when the series has nothing the format can carry (an InfluxDB line whose statistics are all
NaN). The message key is not chosen here: it is always the series identity
(:attr:`SeriesStats.key`), whatever the format.

Client bytes never become syntax. The JSON formats are written by orjson, which escapes every
character JSON reads as structure (quotes, backslashes, control characters). InfluxDB line
protocol escapes ``,`` and space in a measurement and ``,``, ``=`` and space in tag keys, tag
values and field keys with a backslash (and a backslash as two); what it cannot escape is
refused with :class:`Unencodable`, which the forwarder counts (``unencodable``): any ASCII
control character (a newline would end the line and forge the next one), an empty
measurement or tag key, and a measurement starting with ``#`` (a comment line there). In every
format a lone surrogate (no character, so no UTF-8) is refused the same way; the decoders never
produce one.

``partials`` carries a series' mergeable state for the global tier
(:mod:`forwarders.kafka.partials`).

JSON Schemas of the three other formats, for consumers, live in ``docs/schemas/``.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from forwarders.kafka.partials import encode_partial
from forwarders.records import series_record
from pystatsd.snapshot import SeriesStats, Snapshot

__all__ = [
    "FORMATS",
    "LEGACY_RESERVED",
    "LEGACY_VALUE_STAT",
    "Encoder",
    "Unencodable",
    "legacy_timestamp",
    "make_encoder",
]

Encoder = Callable[[SeriesStats, Snapshot], "bytes | None"]

LEGACY_RESERVED = frozenset({"name", "value", "apikey", "tenant_id", "@version", "@timestamp"})
"""Fields of the legacy event that a tag may not overwrite; such a tag is sent as ``tag_<key>``."""

LEGACY_VALUE_STAT: dict[str, str] = {
    "counter": "count",
    "gauge": "value",
    "timer": "mean",
    "histogram": "mean",
    "set": "count",
    "trace": "count",
}
"""Which statistic of a series becomes ``value`` in the legacy event, by type. The old daemon
sent a trace's count and a gauge's value and nothing for counters; timers, histograms and sets
did not exist. A type not listed sends its first statistic."""

FORMATS = ("legacy", "json", "influx", "partials")


class Unencodable(ValueError):
    """The series cannot be written in this format without changing what it says."""


@functools.lru_cache(maxsize=16)  # one value per flush, asked for once per series
def legacy_timestamp(epoch_seconds: float) -> str:
    """The old daemon's ``@timestamp`` shape, ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC."""
    whole = int(epoch_seconds)
    millis = int(round((epoch_seconds - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _plain_number(value: float) -> float | int:
    """An integral float as an int, so a count reads ``3`` as the old daemon sent it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _legacy_encoder(apikey: str, tenant_id: str) -> Encoder:
    def encode(series: SeriesStats, snapshot: Snapshot) -> bytes:
        stat = LEGACY_VALUE_STAT.get(series.type)
        if stat is None or stat not in series.stats:
            stat = next(iter(series.stats), "")
        event: dict[str, Any] = {
            "name": series.name,
            "value": _plain_number(series.stats.get(stat, 0)),
            "apikey": apikey,
            "tenant_id": tenant_id,
            "@version": "1",
            "@timestamp": legacy_timestamp(_when(series, snapshot)),
        }
        renamed = []
        for key, value in series.tags:
            if key in LEGACY_RESERVED:
                renamed.append(("tag_" + key, value))
            else:
                event[key] = value
        for field, value in renamed:
            # A tag named like a reserved field used to overwrite it (the old daemon applied tags
            # last); now it keeps its value under a prefixed name and the reserved field stays.
            # A real tag already called tag_<key> keeps that field.
            event.setdefault(field, value)
        return _dumps(event)

    return encode


def _when(series: SeriesStats, snapshot: Snapshot) -> float:
    """The time a message stands for: the client's timestamp of a passed-through series,
    else its interval's start."""
    return snapshot.start if series.timestamp is None else series.timestamp


def _dumps(document: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError as exc:  # a lone surrogate: no UTF-8 for it
        raise Unencodable(f"not valid Unicode: {exc}") from None


def _json_encode(series: SeriesStats, snapshot: Snapshot) -> bytes:
    return _dumps(series_record(series, snapshot))


_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "\\": "\\\\"})
_TAG_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\=", "\\": "\\\\"})
# Line protocol has no escape for these: a newline ends the line, the others are never meant.
# A lone surrogate cannot be written as UTF-8 at all.
_INFLUX_UNWRITABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _influx_refuse(text: str, what: str) -> None:
    found = _INFLUX_UNWRITABLE.search(text)
    if found is not None:
        raise Unencodable(f"{what} {text[:60]!r} holds {found.group()!r}, which InfluxDB line "
                          "protocol cannot carry")


# Names, tag keys and values and statistic names repeat every flush: check and escape each once
# (an Unencodable is not cached: a refused name costs its check every flush, as it should).
@functools.lru_cache(maxsize=1 << 16)
def _escape_measurement(text: str) -> str:
    if not text:
        raise Unencodable("empty measurement")
    if text.startswith("#"):
        raise Unencodable(f"measurement {text[:60]!r} starts with '#', which makes a comment "
                          "line in InfluxDB line protocol")
    _influx_refuse(text, "measurement")
    return text.translate(_MEASUREMENT_ESCAPES)


@functools.lru_cache(maxsize=1 << 16)
def _escape_tag(text: str) -> str:
    _influx_refuse(text, "tag")
    return text.translate(_TAG_ESCAPES)


def _influx_head(name: str, tags: tuple[tuple[str, str], ...]) -> str:
    parts = [_escape_measurement(name)]
    for key, value in tags:
        if not key:
            raise Unencodable("empty tag key")
        if value != "":  # line protocol has no empty tag values: the tag is left out
            parts.append(f",{_escape_tag(key)}={_escape_tag(value)}")
    return "".join(parts)


def _influx_encode(series: SeriesStats, snapshot: Snapshot) -> bytes | None:
    # Every field is a float (no `i` suffix) so a field keeps one type across intervals, which
    # InfluxDB requires; NaN and infinities cannot be written, so they are left out.
    fields = ",".join([
        f"{_escape_tag(key)}={float(value)!r}"
        for key, value in series.stats.items()
        if isinstance(value, int | float) and math.isfinite(value)
    ])
    if not fields:
        return None
    nanoseconds = int(round(_when(series, snapshot) * 1000)) * 1_000_000
    return f"{_influx_head(series.name, series.tags)} {fields} {nanoseconds}".encode()


def make_encoder(format_name: str, apikey: str = "", tenant_id: str = "") -> Encoder:
    """Given a format name (one of :data:`FORMATS`), return its encoder."""
    if format_name == "legacy":
        return _legacy_encoder(apikey, tenant_id)
    if format_name == "json":
        return _json_encode
    if format_name == "influx":
        return _influx_encode
    if format_name == "partials":
        return encode_partial
    raise ValueError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")
