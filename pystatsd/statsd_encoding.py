"""A sample -> DogStatsD line(s), for relaying JSON input to statsd servers.

Client bytes never become syntax: a name, tag or set member that holds a character statsd
reads as structure is refused (:class:`Unencodable`), never escaped — statsd has no escaping,
so any substitute would silently rename the series. What counts as structure is what the
statsd and DogStatsD parsers split on (ours in :mod:`pystatsd.decoders.statsd_line`, Etsy's,
Datadog's): a line ends at a newline; ``|`` separates fields; ``:`` ends the name; ``,``
separates InfluxDB-style name tags and DogStatsD tags; a name starting ``_e{`` is an event;
ASCII whitespace at either end of a line or tag is trimmed by some parsers. A tag value may
hold ``:`` (the first one splits key from value), a set member may not: Etsy's statsd splits a
line at every ``:`` (packed values), so ``::1|s`` is a bad line there. Etsy also turns DogStatsD
tags into Graphite tags, ``name;key=value``, replacing only the first ``;`` and ``:`` of each
tag, so ``;`` anywhere and ``=`` in a tag key would forge or rename Graphite tags. The Unicode
line breaks (U+0085, U+2028, U+2029) are refused too: a parser that splits text lines with
Python's ``str.splitlines`` ends a line there.
"""

from __future__ import annotations

import re

from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample

__all__ = ["Unencodable", "sample_to_statsd_lines"]

_TYPE_CODES = {COUNTER: "c", GAUGE: "g", TIMER: "ms", HISTOGRAM: "h", SET: "s", TRACE: "c"}

# Every ASCII control character is refused: newline and CR end lines, the others are never
# meant and some parsers trim or split on them.
# A lone surrogate is no character at all: it cannot be written as UTF-8.
_CONTROL = "\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff"
_BAD_NAME = re.compile(f"[{_CONTROL}:|,;]")
_BAD_TAG_KEY = re.compile(f"[{_CONTROL}:|,;=]")
_BAD_TAG_VALUE = re.compile(f"[{_CONTROL}|,;]")
_BAD_MEMBER = re.compile(f"[{_CONTROL}|:]")


class Unencodable(ValueError):
    """The sample cannot be written as a statsd line without changing what it says."""


def _check(text: str, pattern: re.Pattern[str], what: str, allow_empty: bool = False) -> str:
    if not text and not allow_empty:
        raise Unencodable(f"empty {what}")
    found = pattern.search(text)
    if found is not None:
        raise Unencodable(f"{what} {text[:60]!r} holds {found.group()!r}, which is statsd syntax")
    if text != text.strip():
        raise Unencodable(f"{what} {text[:60]!r} starts or ends with white space")
    return text


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def sample_to_statsd_lines(sample: Sample) -> list[bytes]:
    """Given one sample, return its DogStatsD line(s), without newlines, or raise
    :class:`Unencodable`. A negative absolute gauge takes two lines (``:0`` then the negative
    delta), because statsd reads a bare ``-N|g`` as a decrement. A trace (one event) becomes a
    counter of 1; the client's timestamp is not carried."""
    name = _check(sample.name, _BAD_NAME, "name")
    if name.startswith("_e{"):
        raise Unencodable(f"name {name[:60]!r} would read as a DogStatsD event")
    tail = [_TYPE_CODES[sample.type]]
    if sample.rate != 1.0:
        tail.append(f"@{_number(sample.rate)}")
    if sample.tags:
        tags = []
        for key, value in sample.tags:
            _check(key, _BAD_TAG_KEY, "tag key")
            _check(value, _BAD_TAG_VALUE, "tag value", allow_empty=True)
            tags.append(f"{key}:{value}" if value else key)
        tail.append("#" + ",".join(tags))
    suffix = "|" + "|".join(tail)
    if sample.type == SET:
        member = _check(str(sample.value), _BAD_MEMBER, "set member")
        return [f"{name}:{member}{suffix}".encode()]
    number = float(sample.value)
    value = _number(number)
    if sample.type == GAUGE and sample.delta and number >= 0:
        value = "+" + value
    lines = [f"{name}:{value}{suffix}".encode()]
    if sample.type == GAUGE and not sample.delta and number < 0:
        lines.insert(0, f"{name}:0{suffix}".encode())
    return lines
