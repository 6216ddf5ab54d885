"""The graphite plaintext, graphite pickle and statsite decoders, fed from data files under
tests/graphite/corpus and from bytes built by an encoder written from statsite's spec."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from statsite_wire import COUNTER, GAUGE, GAUGE_DELTA, KEY_VALUE, MAGIC, TIMER, frame, set_frame

from pystatsd.decoders import INTERNAL_ERRORS, parse_statsd_line
from pystatsd.decoders.graphite_line import decode_graphite_payload
from pystatsd.decoders.graphite_pickle import PickleFrames, decode_pickle_frame
from pystatsd.decoders.statsite import decode_statsite
from pystatsd.sample import Sample
from pystatsd.selfstats import REJECT_REASONS, SelfStats

CORPUS = Path(__file__).parent / "corpus"


def as_record(sample: Sample) -> dict[str, Any]:
    return {"name": sample.name, "type": sample.type, "value": sample.value,
            "rate": sample.rate, "tags": [list(tag) for tag in sample.tags],
            "delta": sample.delta, "timestamp": sample.timestamp}


def rejects(stats: SelfStats) -> dict[str, int]:
    found = {name.removeprefix("rejected."): count for name, count in stats.counters.items()
             if name.startswith("rejected.") and count}
    assert set(found) <= set(REJECT_REASONS)
    assert stats.counters[INTERNAL_ERRORS] == 0
    return found


def cases(kind: str, suffix: str) -> list[Any]:
    files = sorted((CORPUS / kind).glob(f"*{suffix}"))
    assert len(files) >= 3, f"corpus {kind} went missing"
    return [pytest.param(path, id=path.stem) for path in files]


# -- graphite plaintext -------------------------------------------------------------------

@pytest.mark.parametrize("payload_file", cases("plaintext", ".txt"))
def test_plaintext_corpus(payload_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = json.loads(payload_file.with_suffix(".json").read_text())
    stats = SelfStats()
    samples = decode_graphite_payload(payload_file.read_bytes(), stats)
    assert [as_record(s) for s in samples] == expected["samples"]
    assert rejects(stats) == expected["rejected"]
    if expected["rejected"]:
        assert "graphite" in caplog.text


def test_cactus_style_graphite_tags_in_a_statsd_name_become_tags() -> None:
    # The Go cactus client writes tags as graphite does, inside the statsd name.
    assert parse_statsd_line(b"x;env=stage;region=eu:1|c") == [
        Sample("x", "counter", 1.0, tags=(("env", "stage"), ("region", "eu")))]
    assert parse_statsd_line(b"x,a=1;b=2:3|g|#c:4")[0].tags == (("a", "1"), ("b", "2"),
                                                               ("c", "4"))


# -- graphite pickle ----------------------------------------------------------------------

@pytest.mark.parametrize("stream_file", cases("pickle", ".pickle"))
def test_pickle_corpus_whole_and_byte_by_byte(stream_file: Path) -> None:
    expected = json.loads(stream_file.with_suffix(".json").read_text())
    stream = stream_file.read_bytes()
    for chunk_size in (len(stream), 1, 7):
        frames = PickleFrames()
        stats = SelfStats()
        samples: list[Sample] = []
        for at in range(0, len(stream), chunk_size):
            for body in frames.feed(stream[at:at + chunk_size]):
                samples.extend(decode_pickle_frame(body, stats))
        assert frames.pending_bytes() == 0 and not frames.refused
        assert [as_record(s) for s in samples] == expected["samples"]
        assert rejects(stats) == expected["rejected"]


class _CreatesAFile:
    """Unpickled by a plain ``pickle.loads``, this would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class _RunsAShell:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("hostile", [_CreatesAFile, _RunsAShell])
def test_a_reduce_payload_is_refused_and_never_runs(tmp_path: Path, protocol: int,
                                                   hostile: type) -> None:
    target = tmp_path / "pwned"
    body = pickle.dumps([("a.b", (1700000000, 1)), hostile(target)], protocol=protocol)
    assert b"open" in body or b"system" in body  # the payload really names the callable
    stats = SelfStats()
    assert decode_pickle_frame(body, stats) == []
    assert not target.exists()
    assert rejects(stats) == {"bad_line": 1}


def test_unpickled_objects_are_only_plain_data(tmp_path: Path) -> None:
    # a set, a frozenset or a class instance all need a global (builtins.set, copyreg...)
    for obj in ({1, 2}, frozenset([1]), _CreatesAFile(tmp_path / "x"), range(3)):
        stats = SelfStats()
        assert decode_pickle_frame(pickle.dumps([obj], protocol=2), stats) == []
        assert rejects(stats) == {"bad_line": 1}, obj


def test_a_frame_announcing_more_than_the_limit_stops_the_stream() -> None:
    frames = PickleFrames(max_bytes=1000)
    good = pickle.dumps([("a", (1, 2))])
    stream = struct.pack(">I", len(good)) + good + struct.pack(">I", 1001) + b"x" * 1001
    bodies = frames.feed(stream)
    assert bodies == [good]
    assert frames.refused and frames.announced == 1001
    assert frames.feed(struct.pack(">I", len(good)) + good) == []


# -- statsite -----------------------------------------------------------------------------

def decode_all(payload: bytes, final: bool = True) -> tuple[list[Sample], SelfStats, int]:
    stats = SelfStats()
    samples, used = decode_statsite(payload, stats, final)
    return samples, stats, used


def test_the_readme_example_frame() -> None:
    # statsite's README: ("Conns", "c", 200) is 0xaa 0x02 0x0600 0x0000000000006940 0x436f6e6e7300
    readme = bytes.fromhex("aa02" "0600" "0000000000006940" "436f6e6e7300")
    assert frame(COUNTER, "Conns", 200) == readme
    samples, stats, used = decode_all(readme)
    assert samples == [Sample("Conns", "counter", 200.0)]
    assert used == len(readme) and rejects(stats) == {}


def test_every_binary_type_mixed_with_ascii_on_one_stream() -> None:
    stream = (b"ascii.first:1|c\n"
              + frame(KEY_VALUE, "kv.bin", -3)
              + frame(COUNTER, "c.bin", 2.5)
              + frame(TIMER, "t.bin", 12)
              + b"ascii.between:5|ms\n"
              + set_frame("s.bin", "alice")
              + frame(GAUGE, "g.bin", -7)
              + frame(GAUGE_DELTA, "gd.bin", -2)
              + b"mysql.queries:1381|kv\nnegative.kv:-4|kv\n"
              # a key holding statsd syntax, which is what the binary protocol is for
              + frame(COUNTER, "odd:key|pipe", 1)
              + b"ascii.last:3|g")
    samples, stats, used = decode_all(stream)
    assert samples == [
        Sample("ascii.first", "counter", 1.0),
        Sample("kv.bin", "gauge", -3.0),
        Sample("c.bin", "counter", 2.5),
        Sample("t.bin", "timer", 12.0),
        Sample("ascii.between", "timer", 5.0),
        Sample("s.bin", "set", "alice"),
        Sample("g.bin", "gauge", -7.0),
        Sample("gd.bin", "gauge", -2.0, delta=True),
        Sample("mysql.queries", "gauge", 1381.0),
        Sample("negative.kv", "gauge", -4.0),
        Sample("odd:key|pipe", "counter", 1.0),
        Sample("ascii.last", "gauge", 3.0),
    ]
    assert rejects(stats) == {} and used == len(stream)


def test_a_stream_cut_anywhere_decodes_the_same() -> None:
    stream = (frame(COUNTER, "a", 1) + b"b:2|c\n" + set_frame("c", "m") + frame(TIMER, "d", 4)
              + b"e:5|g\n")
    whole, _, _ = decode_all(stream)
    for cut in range(len(stream) + 1):
        stats = SelfStats()
        first, used = decode_statsite(stream[:cut], stats, final=False)
        second, rest = decode_statsite(stream[used:], stats, final=True)
        assert first + second == whole, cut
        assert rejects(stats) == {}


def test_a_frame_with_a_newline_in_its_value_is_not_cut_there() -> None:
    value = struct.unpack("<d", b"\n" * 8)[0]
    samples, stats, _ = decode_all(frame(TIMER, "nl", value) + b"next:1|c\n")
    assert samples == [Sample("nl", "timer", value), Sample("next", "counter", 1.0)]


@pytest.mark.parametrize(("bad", "reason"), [
    # bad magic: not binary, so one ASCII line up to the newline, and not text
    (b"\xab" + frame(COUNTER, "x", 1)[1:] + b"\n", "not_utf8"),
    # an unknown type: skipped up to the next newline
    (struct.pack("<BBHd", MAGIC, 9, 2, 1.0) + b"x\0\n", "unknown_type"),
    # short key: a key length of 0 or 1 leaves no room for a key and its NUL
    (struct.pack("<BBHd", MAGIC, COUNTER, 0, 1.0), "missing_field"),
    (struct.pack("<BBHd", MAGIC, COUNTER, 1, 1.0) + b"\0", "missing_field"),
    # missing NUL
    (struct.pack("<BBHd", MAGIC, COUNTER, 3, 1.0) + b"abc", "bad_line"),
    (struct.pack("<BBHH", MAGIC, 4, 2, 3) + b"k\0abc", "bad_line"),
    # a value that is not a finite double
    (frame(GAUGE, "inf", float("inf")), "bad_value"),
])
def test_a_malformed_frame_is_counted_and_the_ascii_around_it_survives(bad: bytes,
                                                                       reason: str) -> None:
    stream = b"before:1|c\n" + bad + b"after:2|c\n" + frame(COUNTER, "binary.after", 3)
    samples, stats, used = decode_all(stream)
    assert samples == [Sample("before", "counter", 1.0), Sample("after", "counter", 2.0),
                       Sample("binary.after", "counter", 3.0)]
    assert rejects(stats) == {reason: 1}
    assert used == len(stream)


@pytest.mark.parametrize("cut", [1, 3, 4, 7, 11])
def test_a_truncated_frame_at_the_end_is_counted(cut: int) -> None:
    # cut inside the header, inside the double (truncated double), inside the key
    truncated = frame(TIMER, "truncated.key", 1.5)[:cut + (0 if cut < 4 else 4)]
    stream = b"before:1|c\n" + truncated
    samples, stats, used = decode_all(stream)
    assert samples == [Sample("before", "counter", 1.0)]
    assert rejects(stats) == {"bad_line": 1}
    # on a live TCP stream, the same bytes are simply waited for
    samples, stats, used = decode_all(stream, final=False)
    assert samples == [Sample("before", "counter", 1.0)] and used == len(b"before:1|c\n")
    assert rejects(stats) == {}
