"""Partials of three hosts, through the `partials` encoding, merged: the same statistics as one
daemon that received every host's samples."""

from __future__ import annotations

import pytest
from global_helpers import ACCURACY, assert_matches, corpus, host_snapshot, truth, union_values

from forwarders.kafka.formats import make_encoder
from forwarders.kafka.partials import decode_partial
from pystatsd.distribution import percentile_key
from pystatsd.global_tier.partial_state import SeriesMerge
from pystatsd.sample import GAUGE

PERCENTILES = [(float(p), percentile_key(p)) for p in (50, 90, 95, 99)]


@pytest.mark.parametrize("exact_samples", [100_000, 50], ids=["exact", "sketched"])
def test_three_hosts_merge_to_the_union(exact_samples: int) -> None:
    encode = make_encoder("partials")
    corpora = [corpus(host, seed=7) for host in range(3)]
    merges: dict[tuple[str, str, tuple[tuple[str, str], ...]], SeriesMerge] = {}
    for host, samples in enumerate(corpora):
        snapshot = host_snapshot(host, 1000.0, samples, exact_samples)
        for series in snapshot.series:
            value = encode(series, snapshot)
            assert value is not None
            message = decode_partial(value)
            key = (message["name"], message["type"], message["tags"])
            merge = merges.setdefault(key, SeriesMerge(message["type"]))
            merge.add(message["partial"], message["interval_start"] + message["interval"],
                      message["host"], exact_samples, ACCURACY)
    union = [s for samples in corpora for s in samples]
    expected = truth(union, 1_000_000)
    assert merges.keys() == expected.keys()
    for key, merge in merges.items():
        stats = merge.stats(10.0, PERCENTILES, ACCURACY)
        assert stats is not None
        if key[1] == GAUGE:  # three hosts set it; one value wins, the same every time
            assert stats == {"value": 200.0 + int(key[2][0][1][1:])}
            continue
        sketched = exact_samples < 1000 and key[1] in ("timer", "histogram")
        assert_matches(stats, expected[key], union_values(union, *key) if sketched else None)


def test_a_series_without_partial_is_not_sent() -> None:
    encode = make_encoder("partials")
    snapshot = host_snapshot(0, 1000.0, corpus(0, seed=1), 1000)
    bare = snapshot.series[0].__class__("self.metric", "counter", (), {"count": 1.0})
    assert encode(bare, snapshot) is None


def test_a_sketched_partial_carries_the_library_protobuf() -> None:
    from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage

    snapshot = host_snapshot(0, 1000.0, corpus(0, seed=3), 50)
    timer = next(s for s in snapshot.series if s.type == "timer")
    assert timer.partial is not None
    message = DDSketchMessage()
    message.ParseFromString(timer.partial["sketch"])
    assert message.mapping.gamma == pytest.approx((1 + ACCURACY) / (1 - ACCURACY))


def test_global_mode_without_a_broker_stops_with_one_line_naming_the_key(tmp_path) -> None:
    import subprocess
    import sys

    config = tmp_path / "global.yaml"
    config.write_text(f"mode: global\nstate_dir: {tmp_path}\n")
    result = subprocess.run([sys.executable, "-m", "pystatsd", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "global.kafka_broker" in lines[0], result.stderr


def test_a_partial_of_the_wrong_shape_is_refused_not_merged() -> None:
    merge = SeriesMerge("counter")
    with pytest.raises(KeyError):
        merge.add({"members": ["a"]}, 0.0, "h", 10, ACCURACY)
    with pytest.raises(ValueError):
        decode_partial(b'{"format": "something else"}')
    merge.add({"sum": 2.0}, 0.0, "h", 10, ACCURACY)
    assert merge.stats(2.0, PERCENTILES, ACCURACY) == {"count": 2.0, "rate": 1.0}


def test_the_fast_sketch_reader_reads_what_the_library_reads() -> None:
    import random

    from ddsketch import DDSketch
    from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
    from ddsketch.pb.proto import DDSketchProto

    from pystatsd.global_tier.partial_state import sketch_from_bytes

    rng = random.Random(5)
    sketch = DDSketch(relative_accuracy=ACCURACY)
    for _ in range(5000):
        sketch.add(rng.choice([-1, 1]) * rng.lognormvariate(2, 2))
    sketch.add(0.0, 3.0)
    data = DDSketchProto.to_proto(sketch).SerializeToString()
    message = DDSketchMessage()
    message.ParseFromString(data)
    library, ours = DDSketchProto.from_proto(message), sketch_from_bytes(data)
    assert ours.count == library.count == sketch.count
    for q in [i / 200 for i in range(201)]:
        assert ours.get_quantile_value(q) == library.get_quantile_value(q)
