"""Client bytes never become syntax downstream: arbitrary Unicode goes through every encoder
that writes text, and a parser written here from each format's own rules (not our decoders)
reads the output back as exactly one sample or series with the same name, tags and value. The
only other outcome allowed is a refusal, and only for an input that holds something the format
cannot carry; the Kafka forwarder counts each one (``unencodable``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarders.base import ForwarderContext
from forwarders.kafka.formats import LEGACY_RESERVED, LEGACY_VALUE_STAT, Unencodable, make_encoder
from forwarders.kafka.forwarder import KafkaForwarder
from pystatsd.config import build_config
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample
from pystatsd.snapshot import SeriesStats, Snapshot
from pystatsd.statsd_encoding import Unencodable as StatsdUnencodable
from pystatsd.statsd_encoding import sample_to_statsd_lines

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Characters that are structure in at least one of the formats, drawn often so that every
# rule is exercised, mixed with any other Unicode character.
SYNTAX = list(",= :|#;@\\\"'{}[]\n\r\t\x00\x0b\x1f\x7f\x85\u2028\u2029_eT")
TEXT = st.text(st.one_of(st.sampled_from(SYNTAX), st.characters()), max_size=12)
FINITE = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def tags(draw: st.DrawFn) -> tuple[tuple[str, str], ...]:
    pairs = draw(st.dictionaries(TEXT, TEXT, max_size=4))
    return tuple(sorted(pairs.items()))


# -- DogStatsD, as Etsy's statsd and the Datadog agent read it ---------------------------------

# What the statsd parsers split on (docs of pystatsd.statsd_encoding say where each comes from).
SURROGATES = {chr(c) for c in range(0xD800, 0xE000)}  # no UTF-8 for them: refused everywhere
LINE_BREAKS = set("\n\r\x85\u2028\u2029") | {chr(c) for c in range(0x20)} | {"\x7f"}
STATSD_SYNTAX = {
    "name": set(":|,;"), "tag key": set(":|,;="), "tag value": set("|,;"), "member": set("|:"),
}


def statsd_must_refuse(sample: Sample) -> bool:
    def bad(text: str, what: str, allow_empty: bool = False) -> bool:
        return ((not text and not allow_empty) or text != text.strip()
                or any(ch in LINE_BREAKS or ch in SURROGATES or ch in STATSD_SYNTAX[what]
                       for ch in text))

    if bad(sample.name, "name") or sample.name.startswith("_e{"):
        return True
    if any(bad(k, "tag key") or bad(v, "tag value", allow_empty=True) for k, v in sample.tags):
        return True
    return sample.type == SET and bad(str(sample.value), "member")


def read_statsd_line(line: str) -> tuple[str, str, str, float, dict[str, str]]:
    """name, value text, type, rate, tags: split the way Etsy's statsd does (every ':' and
    '|' and the first '|#'), so anything our encoder let through as syntax shows here."""
    assert not LINE_BREAKS & set(line), line
    before_tags, *tag_part = line.split("|#")
    assert len(tag_part) <= 1, line
    name, value, *more_values = before_tags.split("|")[0].split(":")
    assert not more_values, f"packed values in {line!r}"
    # Etsy appends the tags to the name as Graphite tags, ';'-separated
    assert ";" not in name + "".join(tag_part), line
    fields = before_tags.split("|")[1:]
    kind, rate = fields[0], 1.0
    for field in fields[1:]:
        assert field.startswith("@"), line
        rate = float(field[1:])
    tag_map: dict[str, str] = {}
    if tag_part:
        for item in tag_part[0].split(","):
            key, _, tag_value = item.partition(":")
            assert key not in tag_map, line
            tag_map[key] = tag_value
    return name, value, kind, rate, tag_map


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    kind = draw(st.sampled_from([COUNTER, GAUGE, TIMER, HISTOGRAM, SET, TRACE]))
    value: float | str = draw(TEXT) if kind == SET else 1.0 if kind == TRACE else draw(FINITE)
    rate = draw(st.sampled_from([1.0, 0.5, 0.1, 1e-3]) | st.floats(1e-9, 1.0))
    return Sample(draw(TEXT), kind, value, 1.0 if kind == TRACE else rate, draw(tags()),
                  delta=kind == GAUGE and draw(st.booleans()))


@SETTINGS
@given(samples())
def test_a_sample_becomes_one_statsd_sample_with_the_same_name_tags_and_value(
        sample: Sample) -> None:
    try:
        lines = [line.decode() for line in sample_to_statsd_lines(sample)]
    except StatsdUnencodable:
        assert statsd_must_refuse(sample), f"refused {sample!r}, which statsd can carry"
        return
    assert not statsd_must_refuse(sample), f"{sample!r} passed: {lines!r}"
    code = {COUNTER: "c", TRACE: "c", GAUGE: "g", TIMER: "ms", HISTOGRAM: "h", SET: "s"}
    gauge = 42.0  # the backend's gauge before the lines arrive
    for line in lines:
        name, value, kind, rate, tag_map = read_statsd_line(line)
        assert (name, kind, rate) == (sample.name, code[sample.type], sample.rate)
        assert tag_map == dict(sample.tags)
        if sample.type == GAUGE:
            gauge = gauge + float(value) if value[0] in "+-" else float(value)
    if sample.type == SET:
        assert len(lines) == 1 and value == sample.value
    elif sample.type == GAUGE:
        expected = 42.0 + float(sample.value) if sample.delta else float(sample.value)
        assert gauge == expected or math.isclose(gauge, expected), (lines, sample)
    else:
        assert len(lines) == 1 and float(value) == float(sample.value)


# -- the Kafka formats --------------------------------------------------------------------------

STATS = st.dictionaries(st.sampled_from(["count", "sum", "value", "mean", "p99_9", "rate"]),
                        FINITE, min_size=1, max_size=4)


@st.composite
def series(draw: st.DrawFn) -> SeriesStats:
    kind = draw(st.sampled_from(list(LEGACY_VALUE_STAT)))
    return SeriesStats(draw(TEXT), kind, draw(tags()), draw(STATS))


INFLUX_SCHEMA = jsonschema.Draft202012Validator(json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "schemas" /
     "kafka-influx-line.schema.json").read_text()))
SNAPSHOT = Snapshot(1_700_000_000.0, 10.0, "host, =\n1")

# InfluxDB line protocol (docs.influxdata.com, "Line protocol", "Special characters"): a
# measurement escapes ',' and ' '; tag keys, tag values and field keys escape ',', '=' and ' ';
# '\\' before one of those (or before a backslash) is an escape, elsewhere a literal. A line
# starting with '#' is a comment; a newline ends the line and cannot be escaped.
_INFLUX_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"} | SURROGATES


def influx_must_refuse(item: SeriesStats) -> bool:
    if not item.name or item.name.startswith("#") or _INFLUX_CONTROL & set(item.name):
        return True
    return any(not key or (value and _INFLUX_CONTROL & set(key + value))
               for key, value in item.tags)


def _influx_token(text: str, at: int, special: str, stops: str) -> tuple[str, int]:
    out = []
    while at < len(text) and text[at] not in stops:
        if text[at] == "\\" and at + 1 < len(text) and text[at + 1] in special + "\\":
            out.append(text[at + 1])
            at += 2
        else:
            out.append(text[at])
            at += 1
    return "".join(out), at


def read_influx_line(line: str) -> tuple[str, dict[str, str], dict[str, float], int]:
    assert "\n" not in line and not line.startswith("#"), line
    name, at = _influx_token(line, 0, ", ", ", ")
    tag_map: dict[str, str] = {}
    while line[at] == ",":
        key, at = _influx_token(line, at + 1, ",= ", ",= ")
        assert line[at] == "=", line
        value, at = _influx_token(line, at + 1, ",= ", ", ")
        assert key not in tag_map and key and value, line
        tag_map[key] = value
    assert line[at] == " ", line
    fields: dict[str, float] = {}
    while True:
        key, at = _influx_token(line, at + 1, ",= ", "=")
        end = at + 1
        while line[end] not in ", ":
            end += 1
        fields[key] = float(line[at + 1:end])
        at = end
        if line[at] == " ":
            break
    stamp = line[at + 1:]
    assert re.fullmatch(r"-?\d+", stamp), line
    return name, tag_map, fields, int(stamp)


@SETTINGS
@given(series())
def test_a_series_becomes_one_influx_line_with_the_same_name_tags_and_fields(
        item: SeriesStats) -> None:
    try:
        value = make_encoder("influx")(item, SNAPSHOT)
    except Unencodable:
        assert influx_must_refuse(item), f"refused {item!r}, which line protocol can carry"
        return
    assert not influx_must_refuse(item), f"{item!r} passed as {value!r}"
    assert value is not None
    INFLUX_SCHEMA.validate(value.decode())  # what consumers are told to expect
    name, tag_map, fields, stamp = read_influx_line(value.decode())
    assert name == item.name
    assert tag_map == {k: v for k, v in item.tags if v}  # line protocol has no empty values
    assert fields == item.stats
    assert stamp == int(SNAPSHOT.start) * 10**9


def has_surrogate(item: SeriesStats) -> bool:
    return bool(SURROGATES & set(item.name + "".join(k + v for k, v in item.tags)))


@SETTINGS
@given(series())
def test_a_series_becomes_one_json_record_with_the_same_name_tags_and_stats(
        item: SeriesStats) -> None:
    try:
        value = make_encoder("json")(item, SNAPSHOT)
    except Unencodable:
        assert has_surrogate(item), f"refused {item!r}"
        return
    record = json.loads(value or b"")  # the stdlib's parser, not orjson
    assert record == {"name": item.name, "type": item.type, "tags": dict(item.tags),
                      "stats": item.stats, "interval_start": SNAPSHOT.start,
                      "interval": SNAPSHOT.interval, "host": SNAPSHOT.host}


@SETTINGS
@given(series())
def test_a_series_becomes_one_legacy_event_with_the_same_name_tags_and_value(
        item: SeriesStats) -> None:
    try:
        value = make_encoder("legacy", "key\n", "t\"")(item, SNAPSHOT)
    except Unencodable:
        assert has_surrogate(item), f"refused {item!r}"
        return
    event = json.loads(value or b"")
    assert (event.pop("name"), event.pop("apikey"), event.pop("tenant_id")) == \
        (item.name, "key\n", "t\"")
    assert event.pop("@version") == "1" and event.pop("@timestamp").startswith("2023-11-14T")
    stat = LEGACY_VALUE_STAT[item.type]
    assert event.pop("value") == item.stats.get(stat, next(iter(item.stats.values())))
    # Documented: a tag named like a reserved field arrives as tag_<key>, unless a real tag
    # has that name.
    expected = dict(item.tags)
    for key in LEGACY_RESERVED & set(expected):
        renamed = expected.pop(key)
        expected.setdefault("tag_" + key, renamed)
    assert event == expected


def test_the_forwarder_counts_each_refusal_and_logs_client_text_escaped(
        tmp_path: Path) -> None:
    config = build_config({"forwarders": {"kafka": {"kafka_topic": "t", "format": "influx"}}})
    forwarder = KafkaForwarder("kafka", config["forwarders"]["kafka"],
                               ForwarderContext(debug_mode=True, state_dir=tmp_path))
    forged = [SeriesStats("#comment", "gauge", (), {"value": 1.0}),
              SeriesStats("cpu", "gauge", (("host", "a\nevil value=9"),), {"value": 1.0}),
              SeriesStats("ok", "gauge", (("k", "v"),), {"value": 2.0})]
    lines = list(forwarder.describe(Snapshot(1.0, 10.0, "h", tuple(forged))))
    assert lines == ["topic=t key=ok,k=v value=ok,k=v value=2.0 1000000000"]
    assert forwarder.counters["unencodable"] == 2
    legacy = KafkaForwarder("kafka", build_config({"forwarders": {"kafka": {
        "kafka_topic": "t"}}})["forwarders"]["kafka"],
        ForwarderContext(debug_mode=True, state_dir=tmp_path))
    [line] = legacy.describe(Snapshot(1.0, 10.0, "h", (forged[1],)))
    assert "\n" not in line and "key=cpu,host=a\\nevil value=9" in line
