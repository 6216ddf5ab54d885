"""The ``partials`` format: one series' mergeable interval state, for the global tier.

A JSON object: ``format`` (``"pystatsd-partials/2"``), ``host``, ``interval_start``,
``interval``, ``name``, ``type``, ``tags`` (``[[key, value], ...]`` in the series' order) and
``partial``, the state :mod:`pystatsd.global_tier.partial_state` documents, with a DDSketch's
protobuf bytes (``sketch``) and a HyperLogLog's serialised form (``hll``) as base64 text.
Floats are written by orjson in their shortest exact form, so exact samples and sums arrive
bit for bit. The message key is the series identity, like every format's, so one partition
(and one global member) owns each series.

A series without a partial (self-metrics, or a daemon not told to keep them) is not sent.

Format 2 changed only sets: ``members`` are the members' 64-bit hashes (JSON integers), and
an ``hll`` sketch is fed those hashes, where format 1 sent and sketched the members' text.
Format 1 is still read, so that the global tier takes partials from hosts not yet upgraded:
its members are hashed on arrival (``pystatsd.global_tier.partial_state.member_hashes``), but
its set sketches (of the text) cannot join format 2's (of the hashes) and are refused.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from pystatsd.snapshot import SeriesStats, Snapshot

__all__ = ["PARTIALS_VERSION", "decode_partial", "encode_partial"]

PARTIALS_VERSION = "pystatsd-partials/2"
_TEXT_MEMBERS_VERSION = "pystatsd-partials/1"
"""The format before sets carried hashes; read, not written."""
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
    if not isinstance(document, dict) or document.get("format") not in (
            PARTIALS_VERSION, _TEXT_MEMBERS_VERSION):
        raise ValueError("not a pystatsd partials message")
    partial = document.get("partial")
    if not isinstance(partial, dict):
        raise ValueError("partials message without a partial")
    if document["format"] == _TEXT_MEMBERS_VERSION and "hll" in partial:
        raise ValueError(f"a set sketch of format {_TEXT_MEMBERS_VERSION} (of the members' "
                         "text) cannot join those of hashes")
    for field in _BINARY:
        if isinstance(partial.get(field), str):
            partial[field] = base64.b64decode(partial[field], validate=True)
    document["tags"] = tuple((str(key), str(value)) for key, value in document["tags"])
    return document
