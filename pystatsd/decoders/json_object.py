"""One decoded JSON object -> one sample.

``{"metric_name": ..., "metric_type": ..., "value": ..., "sample_rate": ..., "timestamp": ...,
<any other scalar field>: <tag value>}``; the rules are in docs/input-formats.md."""

from __future__ import annotations

import math
from typing import Any

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.limits import check_name, check_rate, check_timestamp, parse_number
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample

JSON_TYPES = {
    "counter": COUNTER,
    "gauge": GAUGE,
    "guage": GAUGE,  # the old daemon's spelling, still sent by deployed clients
    "timer": TIMER,
    "histogram": HISTOGRAM,
    "distribution": HISTOGRAM,
    "set": SET,
    "trace": TRACE,
}

RESERVED_FIELDS = frozenset({"metric_name", "metric_type", "value", "sample_rate", "timestamp"})
"""Fields that are never tags. ``count`` is reserved too, but only in a counter (the old
daemon's name for a counter's value); in any other type it is an ordinary tag."""


def parse_json_object(obj: dict[str, Any]) -> Sample:
    """Given one decoded JSON object, return its sample or raise :class:`DecodeError`.

    Every other scalar field becomes a tag; a null, object or array field is left out (the
    metric is kept, the odd field is not a tag)."""
    if not isinstance(obj, dict):
        raise DecodeError("bad_json", f"a {type(obj).__name__} where an object was expected")
    name = obj.get("metric_name")
    if name is None:
        raise DecodeError("missing_field", "no metric_name")
    if not isinstance(name, str):
        raise DecodeError("bad_value", f"metric_name is a {type(name).__name__}, not a string")
    name = check_name(name)

    type_name = obj.get("metric_type")
    if type_name is None:
        raise DecodeError("missing_field", f"no metric_type for {name[:80]!r}")
    kind = JSON_TYPES.get(type_name.lower()) if isinstance(type_name, str) else None
    if kind is None:
        raise DecodeError("unknown_type", f"metric_type {str(type_name)[:20]!r}")

    value: float | str
    if kind == TRACE:
        value = 1.0  # a trace is one event; whatever value it carries is not a measurement
    else:
        raw = obj.get("value")
        if raw is None and kind == COUNTER:
            raw = obj.get("count")
        if raw is None:
            raise DecodeError("missing_field", f"no value for {name[:80]!r}")
        value = _set_member(raw) if kind == SET else _number(raw, "value")

    rate = obj.get("sample_rate")
    rate = 1.0 if rate is None else check_rate(_number(rate, "sample_rate"))
    timestamp = obj.get("timestamp")
    if timestamp is not None:
        timestamp = check_timestamp(_number(timestamp, "timestamp"))

    tags = []
    for key, field in obj.items():
        if key in RESERVED_FIELDS or not key or (key == "count" and kind == COUNTER):
            continue
        if isinstance(field, str):
            tags.append((key, field))
        elif isinstance(field, bool):
            tags.append((key, "true" if field else "false"))
        elif isinstance(field, int | float):
            tags.append((key, str(field)))
        # null, objects and arrays: not a tag, and not a reason to lose the metric
    tags.sort()
    return Sample(name, kind, value, rate, tuple(tags), False, timestamp)


def _number(raw: object, what: str) -> float:
    """Given a JSON number or numeric string, return a finite float or raise ``bad_value``."""
    if isinstance(raw, bool):
        raise DecodeError("bad_value", f"{what} is a boolean, not a number")
    if isinstance(raw, int | float):
        try:
            number = float(raw)
        except OverflowError:  # an int too big for a float (orjson never makes one)
            number = math.inf
        if not math.isfinite(number):
            raise DecodeError("bad_value", f"{what} {raw!r} is out of range")
        return number
    if isinstance(raw, str):
        return parse_number(raw.strip(), what)
    raise DecodeError("bad_value", f"{what} is a {type(raw).__name__}, not a number")


def _set_member(raw: object) -> str:
    """Given a set's JSON value, return it as the string member it stands for."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return str(raw)
    raise DecodeError("bad_value", f"set member is a {type(raw).__name__}, not a scalar")
