"""JSON object lines -> DogStatsD lines, so a relay tier passes pystatsd's JSON input on to
statsd aggregators (which only speak lines).

A line holding one JSON object (or an array of them) is decoded by
:func:`pystatsd.decoders.parse_json_object`, the same rules the aggregating daemon applies, and
re-encoded as ``name:value|type[|@rate][|#k:v,...]``. A ``trace`` (one event per tag set)
becomes a counter of 1; a client timestamp is not carried (statsd has none). A line that is
not valid JSON, or an object the decoder rejects, is not relayable: dropped and counted.
"""

from __future__ import annotations

import orjson

from pystatsd.decoders import DecodeError, parse_json_object
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample

__all__ = ["json_to_statsd_lines", "sample_to_lines"]

_TYPE_CODES = {COUNTER: "c", GAUGE: "g", TIMER: "ms", HISTOGRAM: "h", SET: "s", TRACE: "c"}


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def sample_to_lines(sample: Sample) -> list[bytes]:
    """Given one sample, return its DogStatsD line(s), without newlines. A negative absolute
    gauge takes two lines (``:0`` then the negative delta), because statsd reads a bare
    ``-N|g`` as a decrement."""
    tail = [_TYPE_CODES[sample.type]]
    if sample.rate != 1.0:
        tail.append(f"@{_number(sample.rate)}")
    if sample.tags:
        tail.append("#" + ",".join(f"{k}:{v}" if v else k for k, v in sample.tags))
    suffix = "|" + "|".join(tail)
    if sample.type == SET:
        return [f"{sample.name}:{sample.value}{suffix}".encode()]
    number = float(sample.value)
    value = _number(number)
    if sample.type == GAUGE and sample.delta and number >= 0:
        value = "+" + value
    lines = [f"{sample.name}:{value}{suffix}".encode()]
    if sample.type == GAUGE and not sample.delta and number < 0:
        lines.insert(0, f"{sample.name}:0{suffix}".encode())
    return lines


def json_to_statsd_lines(line: bytes) -> list[bytes] | None:
    """Given a line holding a JSON object or an array of objects, return its statsd lines, or
    None when it is not valid JSON or not one metric (the caller counts it)."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    objects = document if isinstance(document, list) else [document]
    result: list[bytes] = []
    for obj in objects:
        try:
            sample = parse_json_object(obj)
        except DecodeError:
            return None
        except Exception:  # a decoder bug: this line is lost, never the relay
            return None
        result.extend(sample_to_lines(sample))
    return result
