"""One statsd / DogStatsD line -> samples.

``name[,k=v...][;k=v...]:value[:value...]|type[|@rate][|#k:v,flag][|c:container][|Ttimestamp]``
The full grammar, and why each choice, is in docs/input-formats.md."""

from __future__ import annotations

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.limits import (
    MAX_LINE_BYTES,
    check_name,
    check_rate,
    check_timestamp,
    parse_number,
)
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, Sample, Tags

STATSD_TYPES = {
    "c": COUNTER,
    "g": GAUGE,
    "ms": TIMER,
    "h": HISTOGRAM,
    "d": HISTOGRAM,  # DogStatsD distribution: aggregated here like a histogram
    "s": SET,
}


def parse_statsd_line(line: bytes, absolute_gauges: bool = False,
                      container_tag: str = "") -> list[Sample]:
    """Given one statsd or DogStatsD line (no newline; surrounding whitespace is ignored),
    return its samples, one per packed value; raise :class:`DecodeError` if it is not a metric.

    ``absolute_gauges`` is the listener's ``gauge_sign: absolute`` (DogStatsD's meaning): a
    gauge's ``-5`` and ``+5`` set it to -5 and 5. Otherwise (Etsy's meaning) a signed gauge
    value is a change to the current value. ``container_tag`` (the ``container_id_tag``
    setting), when not empty, is the tag key the DogStatsD container id ``|c:<id>`` is kept
    under; a tag of that key the line already has wins.

    A pure function of its bytes and those settings, so a caller may cache its result by line
    (one cache per setting)."""
    if len(line) > MAX_LINE_BYTES:
        raise DecodeError("too_long", f"line of {len(line)} bytes (limit {MAX_LINE_BYTES})")
    try:
        text = line.strip().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("not_utf8", f"byte {exc.start} is not UTF-8") from None
    if text.startswith("_e{"):
        raise DecodeError("not_metric", "DogStatsD event")
    if text.startswith("_sc|"):
        raise DecodeError("not_metric", "DogStatsD service check")

    fields = text.split("|")
    head = fields[0]
    colon = head.find(":")
    if colon < 0 or len(fields) < 2:
        raise DecodeError("bad_line", "not shaped name:value|type")
    kind = STATSD_TYPES.get(fields[1])
    if kind is None:
        if not fields[1]:
            raise DecodeError("missing_field", "no metric type after '|'")
        raise DecodeError("unknown_type", f"metric type {fields[1][:20]!r}")

    name, tags = _split_name(head[:colon])
    value_text = head[colon + 1:]
    if not value_text:
        raise DecodeError("missing_field", "no value after ':'")

    rate = 1.0
    timestamp: float | None = None
    container = ""
    for field in fields[2:]:
        if field.startswith("@"):
            rate = check_rate(parse_number(field[1:], "sample rate"))
        elif field.startswith("#"):
            tags = _merge(tags, _dogstatsd_tags(field[1:]))
        elif field.startswith("T"):
            # DogStatsD v1.3 writes T1656581400; T:1656581400 is taken too.
            stamp = field[2:] if field.startswith("T:") else field[1:]
            timestamp = check_timestamp(parse_number(stamp, "timestamp"))
        elif field.startswith("c:"):
            container = field[2:]
        # any other field a newer client adds (e:, card:) is ignored on purpose.
    if container and container_tag and container_tag not in dict(tags):
        tags = _merge(tags, {container_tag: container})

    if kind == SET:
        # A set member is a string and may itself contain ':' (an IPv6 address); DogStatsD
        # does not pack several members in one line.
        return [Sample(name, SET, value_text, rate, tags, False, timestamp)]
    samples = []
    for value in value_text.split(":"):
        number = parse_number(value, "value")
        # Etsy: a signed gauge value is a change; DogStatsD: every gauge value is the value.
        delta = kind == GAUGE and not absolute_gauges and value[0] in "+-"
        samples.append(Sample(name, kind, number, rate, tags, delta, timestamp))
    return samples


def _split_name(name_part: str) -> tuple[str, Tags]:
    """Given ``name``, InfluxDB-style ``name,k=v,k2=v2`` or graphite-style ``name;k=v;k2=v2``
    (as the Go cactus client writes tags), return the name and its tags."""
    graphite_pairs: list[str] = []
    if ";" in name_part:
        name_part, *graphite_pairs = name_part.split(";")
    if "," not in name_part and not graphite_pairs:
        return check_name(name_part), ()
    name, *pairs = name_part.split(",")
    tags: dict[str, str] = {}
    for pair in pairs + graphite_pairs:
        key, _, value = pair.partition("=")
        if key:
            tags[key] = value
    return check_name(name), tuple(sorted(tags.items()))


def _dogstatsd_tags(text: str) -> dict[str, str]:
    """Given ``k:v,k2:v2,flag``, return {k: v, k2: v2, flag: ""}; a value may contain ':'."""
    tags: dict[str, str] = {}
    for item in text.split(","):
        key, _, value = item.partition(":")
        if key:
            tags[key] = value
    return tags


def _merge(tags: Tags, more: dict[str, str]) -> Tags:
    """Return ``tags`` with ``more`` added; a key in ``more`` replaces the same key in ``tags``."""
    if not tags:
        return tuple(sorted(more.items()))
    merged = dict(tags)
    merged.update(more)
    return tuple(sorted(merged.items()))
