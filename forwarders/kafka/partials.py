"""The ``partials`` format: one series' mergeable interval state, for the global tier.

A JSON object: ``format`` (``"pystatsd-partials/1"``), ``host``, ``interval_start``,
``interval``, ``name``, ``type``, ``tags`` (``[[key, value], ...]`` in the series' order) and
``partial``, the state :mod:`pystatsd.global_tier.partial_state` documents, with a DDSketch's
protobuf bytes (``sketch``) and a HyperLogLog's serialised form (``hll``) as base64 text.
Floats are written by orjson in their shortest exact form, so exact samples and sums arrive
bit for bit. The message key is the series identity, like every format's, so one partition
(and one global member) owns each series.

A series without a partial (self-metrics, or a daemon not told to keep them) is not sent.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from pystatsd.snapshot import SeriesStats, Snapshot

__all__ = ["PARTIALS_VERSION", "decode_partial", "encode_partial"]

PARTIALS_VERSION = "pystatsd-partials/1"
_BINARY = ("sketch", "hll")
"""Fields of a partial that hold a library's serialised sketch."""


def encode_partial(series: SeriesStats, snapshot: Snapshot) -> bytes | None:
    if series.partial is None:
        return None
    partial = dict(series.partial)
    for field in _BINARY:
        data = partial.get(field)
        if isinstance(data, bytes):
            partial[field] = base64.b64encode(data).decode("ascii")
    document = {
        "format": PARTIALS_VERSION,
        "host": snapshot.host,
        "interval_start": snapshot.start,
        "interval": snapshot.interval,
        "name": series.name,
        "type": series.type,
        "tags": [list(pair) for pair in series.tags],
        "partial": partial,
    }
    return orjson.dumps(document)


def decode_partial(value: bytes) -> dict[str, Any]:
    """A message of this format back as a dict, the sketch as bytes again; ValueError when it
    is not one."""
    document = orjson.loads(value)
    if not isinstance(document, dict) or document.get("format") != PARTIALS_VERSION:
        raise ValueError("not a pystatsd partials message")
    partial = document.get("partial")
    if not isinstance(partial, dict):
        raise ValueError("partials message without a partial")
    for field in _BINARY:
        if isinstance(partial.get(field), str):
            partial[field] = base64.b64decode(partial[field], validate=True)
    document["tags"] = tuple((str(key), str(value)) for key, value in document["tags"])
    return document
