"""The unit every decoder produces: one measurement of one series."""

from __future__ import annotations

from typing import NamedTuple

Tags = tuple[tuple[str, str], ...]
"""Tags as a tuple of (key, value) pairs sorted by key, so equal tag sets hash and compare equal.
A DogStatsD flag tag without a value (``#canary``) is ``("canary", "")``."""

COUNTER = "counter"
GAUGE = "gauge"
TIMER = "timer"
HISTOGRAM = "histogram"
SET = "set"
TRACE = "trace"

METRIC_TYPES = (COUNTER, GAUGE, TIMER, HISTOGRAM, SET, TRACE)


class Sample(NamedTuple):
    """One measurement.

    ``value`` is a float for every type but ``set``, whose members are strings, and ``trace``,
    whose value is always 1.0 (one event). ``delta`` is true for a gauge sent as ``+N``/``-N``:
    the value is added to the current gauge instead of replacing it. ``timestamp`` is the
    client's own time in seconds since the epoch, when it sent one.
    """

    name: str
    type: str
    value: float | str
    rate: float = 1.0
    tags: Tags = ()
    delta: bool = False
    timestamp: float | None = None


def make_tags(pairs: dict[str, object] | list[tuple[str, str]]) -> Tags:
    """Given a mapping or a list of (key, value), return them as a sorted ``Tags`` tuple;
    a later duplicate key replaces an earlier one."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    merged = {str(k): _tag_value(v) for k, v in items}
    return tuple(sorted(merged.items()))


def _tag_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
