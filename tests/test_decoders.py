"""Decoders fed raw bytes from a corpus of data files, plus properties no corpus can cover.

tests/corpus/valid/NNN-name.txt holds the raw bytes of one payload and NNN-name.json the samples
it must decode to (nothing may be rejected). tests/corpus/invalid/NNN-name.json holds the samples
that must still come out of a payload with bad parts, and the reject count of each reason."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pystatsd.decoders import (
    INTERNAL_ERRORS,
    DecodeError,
    decode_payload,
    parse_json_object,
    parse_statsd_line,
)
from pystatsd.sample import SET, Sample
from pystatsd.selfstats import REJECT_REASONS, SelfStats

CORPUS = Path(__file__).parent / "corpus"


def corpus_cases(kind: str) -> list[Any]:
    payloads = sorted((CORPUS / kind).glob("*.txt"))
    return [pytest.param(p, id=p.stem) for p in payloads]


def as_record(sample: Sample) -> dict[str, Any]:
    return {"name": sample.name, "type": sample.type, "value": sample.value,
            "rate": sample.rate, "tags": [list(tag) for tag in sample.tags],
            "delta": sample.delta, "timestamp": sample.timestamp}


def rejects(stats: SelfStats) -> dict[str, int]:
    return {name.removeprefix("rejected."): count for name, count in stats.counters.items()
            if name.startswith("rejected.") and count}


def decode_checked(payload: bytes) -> tuple[list[Sample], SelfStats]:
    stats = SelfStats()
    samples = decode_payload(payload, stats)
    for sample in samples:
        assert isinstance(sample, Sample)
        assert isinstance(sample.value, str if sample.type == SET else float), sample
        assert list(sample.tags) == sorted(sample.tags), "tags must be sorted"
    assert stats.counters[INTERNAL_ERRORS] == 0
    return samples, stats


def test_corpus_is_there() -> None:
    # Guards against a moved directory turning the parametrized tests into zero tests.
    assert len(corpus_cases("valid")) >= 30
    assert len(corpus_cases("invalid")) >= 15
    for txt in (CORPUS / "valid").glob("*.txt"):
        assert txt.with_suffix(".json").exists(), txt
    for txt in (CORPUS / "invalid").glob("*.txt"):
        assert txt.with_suffix(".json").exists(), txt


@pytest.mark.parametrize("payload_file", corpus_cases("valid"))
def test_valid_payload(payload_file: Path) -> None:
    expected = json.loads(payload_file.with_suffix(".json").read_text())
    samples, stats = decode_checked(payload_file.read_bytes())
    assert [as_record(s) for s in samples] == expected
    assert rejects(stats) == {}


@pytest.mark.parametrize("payload_file", corpus_cases("invalid"))
def test_invalid_payload(payload_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = json.loads(payload_file.with_suffix(".json").read_text())
    samples, stats = decode_checked(payload_file.read_bytes())
    assert [as_record(s) for s in samples] == expected["samples"]
    assert rejects(stats) == expected["rejected"]
    assert set(expected["rejected"]) <= set(REJECT_REASONS)
    assert any(r.name == "pystatsd.rejects" for r in caplog.records), "rejects must be logged"


# parse_statsd_line and parse_json_object are the API the ingest fast path and the tests of other
# modules call directly: each reason must come out of them, not only out of decode_payload.

@pytest.mark.parametrize(("line", "reason"), [
    (b"a:1|c|@2", "bad_value"),
    (b"a:1|zz", "unknown_type"),
    (b"a:1", "bad_line"),
    (b":1|c", "missing_field"),
    (b"\xff:1|c", "not_utf8"),
    (b"a" * 1025 + b":1|c", "too_long"),
    (b"a:1|c|#" + b"t" * 70000, "too_long"),
    (b"_sc|db|0", "not_metric"),
])
def test_parse_statsd_line_raises_with_reason(line: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as raised:
        parse_statsd_line(line)
    assert raised.value.reason == reason
    assert raised.value.detail


def test_parse_statsd_line_tolerates_carriage_return() -> None:
    assert parse_statsd_line(b"a:1|c\r") == [Sample("a", "counter", 1.0)]


@pytest.mark.parametrize(("obj", "reason"), [
    ({"metric_type": "counter", "value": 1}, "missing_field"),
    ({"metric_name": "a", "value": 1}, "missing_field"),
    ({"metric_name": "a", "metric_type": "meter", "value": 1}, "unknown_type"),
    ({"metric_name": "a", "metric_type": "gauge", "value": "x"}, "bad_value"),
    ({"metric_name": "a", "metric_type": "gauge", "value": 10 ** 400}, "bad_value"),
    ({"metric_name": "a", "metric_type": "timer", "value": 1, "sample_rate": 0}, "bad_value"),
    ({"metric_name": "a" * 1025, "metric_type": "counter", "value": 1}, "too_long"),
])
def test_parse_json_object_raises_with_reason(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError) as raised:
        parse_json_object(obj)
    assert raised.value.reason == reason


def test_parse_json_object_builds_tags_from_scalar_fields() -> None:
    sample = parse_json_object({"metric_name": "m", "metric_type": "guage", "value": "4",
                                "zone": "b", "n": 3, "skip": None, "deep": [1]})
    assert sample == Sample("m", "gauge", 4.0, tags=(("n", "3"), ("zone", "b")))


# Properties: whatever arrives, the decoder neither raises nor loses the good lines beside it.

_name = st.text(st.characters(codec="utf-8", exclude_characters=":|,;#@\n\r=",
                              exclude_categories=("Cc", "Zs", "Cs")), min_size=1, max_size=30
                ).filter(lambda name: not name.startswith("_e{"))  # a DogStatsD event
_tag_text = st.text(st.characters(codec="utf-8", exclude_characters="|,:\n\r=",
                                  exclude_categories=("Cc", "Zs", "Cs")), min_size=1, max_size=12)
# A DogStatsD tag value may hold ':' (url:http://h:80) or be empty (a flag tag).
_tag_value = st.one_of(st.just(""), _tag_text,
                       st.tuples(_tag_text, _tag_text).map(lambda kv: f"{kv[0]}:{kv[1]}"))
_number = st.one_of(st.integers(-10**9, 10**9),
                    st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False))


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[bytes, list[Sample]]:
    """A statsd line built from parts, with the samples it must decode to."""
    name = draw(_name)
    kind, code = draw(st.sampled_from([("counter", "c"), ("gauge", "g"), ("timer", "ms"),
                                       ("histogram", "h"), ("histogram", "d"), ("set", "s")]))
    tags = draw(st.dictionaries(_tag_text, _tag_value, max_size=3))
    rate = draw(st.sampled_from([1.0, 0.5, 0.1]))
    line = name
    if kind == "set":
        member = draw(_tag_text)
        line += f":{member}|s"
        samples = [Sample(name, kind, member, rate, tuple(sorted(tags.items())))]
    else:
        values = draw(st.lists(_number, min_size=1, max_size=3))
        # repr keeps every digit; a plain '1.5' style (never a sign) so a gauge is never a delta
        texts = [repr(abs(v)) for v in values]
        line += ":" + ":".join(texts) + f"|{code}"
        samples = [Sample(name, kind, float(t), rate, tuple(sorted(tags.items())))
                   for t in texts]
    if rate != 1.0:
        line += f"|@{rate}"
    if tags:
        line += "|#" + ",".join(f"{k}:{v}" if v else k for k, v in tags.items())
    return line.encode("utf-8"), samples


# Bytes that mean something to the decoders, so random payloads reach the deep branches too.
_TOKENS = [b":", b"|", b"#", b"@", b",", b"=", b"\n", b"\r", b" ", b"{", b"[", b"]", b"}", b'"',
           b"T", b"c", b"g", b"ms", b"h", b"d", b"s", b"a", b"1", b"-", b"+", b".", b"e", b"0",
           b"\xff", b"\x00", b"\xc3", b"_e{", b"_sc|", b"nan", b"metric_name", b"value"]


@st.composite
def mangled_lines(draw: st.DrawFn) -> bytes:
    """A valid statsd line with a few tokens inserted and a few bytes cut out."""
    line = bytearray(draw(valid_lines())[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(line)))
        if draw(st.booleans()):
            line[at:at] = draw(st.sampled_from(_TOKENS))
        else:
            del line[at:at + draw(st.integers(1, 3))]
    return bytes(line)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=600),
                 st.lists(st.sampled_from(_TOKENS), max_size=80).map(b"".join),
                 st.lists(mangled_lines(), min_size=1, max_size=5).map(b"\n".join)))
def test_decode_payload_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    samples, stats = decode_checked(payload)
    assert set(rejects(stats)) <= set(REJECT_REASONS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode)),
                max_size=100).map(lambda parts: b"".join(parts)))
def test_decode_payload_never_raises_on_json_looking_bytes(tail: bytes) -> None:
    decode_checked(b"{" + tail)
    decode_checked(b"[" + tail)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(valid_lines(), st.binary(max_size=40)), min_size=1, max_size=12))
def test_good_lines_survive_garbage_lines_beside_them(
        parts: list[tuple[bytes, list[Sample]] | bytes]) -> None:
    lines: list[bytes] = []
    expected: list[Sample] = []
    for part in parts:
        if isinstance(part, tuple):
            lines.append(part[0])
            expected.extend(part[1])
        else:
            # Garbage never holds a newline (that would make it two lines, one of them maybe
            # valid); it must not start like JSON, or the whole datagram is read as JSON.
            garbage = part.replace(b"\n", b"").lstrip()
            lines.append(b"#" + garbage if garbage[:1] in (b"{", b"[") else garbage)
    samples, _ = decode_checked(b"\n".join(lines))
    # Every expected sample, in order (garbage may add samples of its own, by chance).
    remaining = iter(samples)
    missing = [s for s in expected if not any(s == got for got in remaining)]
    assert missing == []


def test_rate_limits_are_inclusive_of_one_only() -> None:
    assert parse_statsd_line(b"a:1|c|@1")[0].rate == 1.0
    assert math.isclose(parse_statsd_line(b"a:1|c|@0.001")[0].rate, 0.001)
    with pytest.raises(DecodeError):
        parse_statsd_line(b"a:1|c|@1.0001")


def test_every_reject_reason_the_decoders_use_is_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "input-formats.md").read_text()
    # the aggregator's reasons
    documented = set(REJECT_REASONS) - {"too_many_series", "timestamp_out_of_window",
                                        "late_sample", "bad_event"}
    undocumented = [r for r in documented if f"| `{r}` |" not in docs]
    assert undocumented == []
    # and the corpus exercises each of them at least once
    seen: set[str] = set()
    for expected in (CORPUS / "invalid").glob("*.json"):
        seen |= set(json.loads(expected.read_text())["rejected"])
    # statsd_syntax: the relay encoder's, tested there; overflow: the aggregator's
    assert seen == documented - {"statsd_syntax", "overflow"}
