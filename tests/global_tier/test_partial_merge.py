"""Partials of three hosts, through the `partials` encoding, merged: the same statistics as one
daemon that received every host's samples."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from datasketches import hll_sketch
from global_helpers import ACCURACY, assert_matches, corpus, host_snapshot, truth, union_values

from forwarders.kafka.formats import make_encoder
from forwarders.kafka.partials import decode_partial
from pystatsd.distribution import percentile_key
from pystatsd.global_tier.partial_state import HLL_LG_K, SeriesMerge
from pystatsd.sample import GAUGE, SET, Sample
from pystatsd.snapshot import Snapshot

SeriesId = tuple[str, str, tuple[tuple[str, str], ...]]
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


def merge_hosts(snapshots: list[Snapshot]) -> dict[SeriesId, SeriesMerge]:
    """The snapshots' partials through the `partials` encoding and a global member's merge."""
    encode = make_encoder("partials")
    merges: dict[SeriesId, SeriesMerge] = {}
    for snapshot in snapshots:
        for series in snapshot.series:
            value = encode(series, snapshot)
            assert value is not None
            message = decode_partial(value)
            merge = merges.setdefault((message["name"], message["type"], message["tags"]),
                                      SeriesMerge(message["type"]))
            merge.add(message["partial"], message["interval_start"] + message["interval"],
                      message["host"], 1000, ACCURACY)
    return merges


def set_samples(members: range, tags: tuple[tuple[str, str], ...] = ()) -> list[Sample]:
    return [Sample("api.visitors", SET, f"visitor-{number}", 1.0, tags) for number in members]


def test_sets_past_the_limit_travel_as_sketches_and_unite_within_the_error_bound() -> None:
    """Three hosts' visitors, overlapping: two hosts past ``partial_set_members`` send
    HyperLogLog sketches, one under it sends its members; the global count is the union's
    (the overlap counted once) within the library's 2-sigma bound for a union at lg_k 12."""
    corpora = [range(0, 30_000), range(20_000, 65_000), range(64_500, 65_400)]
    snapshots = [host_snapshot(host, 1000.0, set_samples(members), 1000)
                 for host, members in enumerate(corpora)]
    partials = [snapshot.series[0].partial for snapshot in snapshots]
    assert partials[0] is not None and partials[1] is not None and partials[2] is not None
    assert "hll" in partials[0] and "hll" in partials[1] and "members" in partials[2]
    assert len(partials[0]["hll"]) < 3000  # 30,000 members in a fixed-size sketch
    merged = merge_hosts(snapshots)[("api.visitors", SET, ())].stats(10.0, PERCENTILES, ACCURACY)
    exact = len(set().union(*corpora))  # 65,400: 500 of the exact host's were sketched too
    bound = max(abs(hll_sketch.get_rel_err(upper, True, HLL_LG_K, 2)) for upper in (True, False))
    assert merged is not None and merged["count"] == round(merged["count"])
    assert abs(merged["count"] - exact) <= bound * exact, (merged, exact, bound)


def test_exact_members_inserted_into_a_sketch_are_not_counted_twice() -> None:
    """A host's exact members that the sketching host also saw add nothing; new ones add."""
    sketched = host_snapshot(0, 1000.0, set_samples(range(5000)), 1000)
    alone = merge_hosts([sketched])[("api.visitors", SET, ())].stats(10.0, PERCENTILES, ACCURACY)
    repeats = host_snapshot(1, 1000.0, set_samples(range(4000, 4900)), 1000)
    again = merge_hosts([sketched, repeats])[("api.visitors", SET, ())]
    assert again.stats(10.0, PERCENTILES, ACCURACY) == alone
    assert alone is not None and abs(alone["count"] - 5000) <= 0.033 * 5000


@pytest.mark.parametrize("limit, kind", [(1000, "members"), (400, "hll"), (0, "hll")])
def test_the_limit_decides_exact_or_sketched(limit: int, kind: str) -> None:
    """Under ``partial_set_members`` a set stays exact (its count exact after the merge)."""
    snapshot = host_snapshot(0, 1000.0, set_samples(range(500)), 1000, set_members=limit)
    partial = snapshot.series[0].partial
    assert partial is not None and set(partial) == {kind}
    merged = merge_hosts([snapshot])[("api.visitors", SET, ())].stats(10.0, PERCENTILES, ACCURACY)
    assert merged is not None
    if kind == "members":
        assert merged == {"count": 500.0}
    else:
        assert abs(merged["count"] - 500) <= 0.033 * 500


def test_a_sketch_that_is_not_one_is_refused_not_merged() -> None:
    merge = SeriesMerge(SET)
    with pytest.raises(ValueError):
        merge.add({"hll": b"not a sketch"}, 0.0, "h", 10, ACCURACY)
    with pytest.raises(ValueError):  # base64 that is not: refused at decoding
        decode_partial(b'{"format": "pystatsd-partials/2", "partial": {"hll": "%%%"}, '
                       b'"tags": []}')
    merge.add({"members": ["a", "b"]}, 0.0, "h", 10, ACCURACY)
    assert merge.stats(2.0, PERCENTILES, ACCURACY) == {"count": 2.0}


def test_hosts_partials_count_the_exact_distinct_members_of_a_known_corpus() -> None:
    """Three hosts' members of one set, overlapping, under ``partial_set_members``: the
    hashes travel, and the global count is the union's, exactly (members that differ only in
    bytes, NFC and NFD of one word, are two)."""
    corpora = [["caf\u00e9", "cafe\u0301"] + [f"visitor-{n}" for n in range(300)],
               [f"visitor-{n}" for n in range(200, 700)] + ["caf\u00e9"],
               [f"visitor-{n}" for n in range(650, 900)] * 2]
    snapshots = [host_snapshot(host, 1000.0, [Sample("api.visitors", SET, m) for m in members],
                               1000) for host, members in enumerate(corpora)]
    assert all(isinstance(member, int) for snapshot in snapshots
               for member in snapshot.series[0].partial["members"])
    merged = merge_hosts(snapshots)[("api.visitors", SET, ())].stats(10.0, PERCENTILES, ACCURACY)
    assert merged == {"count": float(len(set().union(*corpora)))} == {"count": 902.0}


def test_a_format_1_partial_joins_by_its_members_hashes_and_its_sketch_is_refused() -> None:
    """A host not yet upgraded sends its members' text (format 1): hashed on arrival, they
    are the members an upgraded host sends; its sketch (of the text) cannot join and is
    refused (counted as undecodable by a global member), not merged wrong."""
    old = {"format": "pystatsd-partials/1", "host": "old", "interval_start": 1000.0,
           "interval": 10.0, "name": "api.visitors", "type": "set", "tags": []}
    message = decode_partial(orjson.dumps({**old, "partial": {"members": ["a", "b", "c"]}}))
    upgraded = host_snapshot(1, 1000.0, [Sample("api.visitors", SET, m) for m in "bcd"], 1000)
    merge = merge_hosts([upgraded])[("api.visitors", SET, ())]
    merge.add(message["partial"], 1010.0, "old", 1000, ACCURACY)
    assert merge.stats(10.0, PERCENTILES, ACCURACY) == {"count": 4.0}
    with pytest.raises(ValueError, match="cannot join"):
        decode_partial(orjson.dumps({**old, "partial": {"hll": "AgEHDAMIAQA="}}))


@pytest.mark.parametrize("cell", ["dict", "daemon's"])
def test_a_set_merged_into_the_daemons_own_cell_counts_what_a_dict_counts(cell: str) -> None:
    """The receive workers' merge keeps a set's hashes in the daemon's set cell (the compiled
    ``MemberSet``): hashes and a format-1 host's text join it as they join the dict."""
    from pystatsd.aggregation import new_set_cell
    from pystatsd.set_members import text_member_hash

    merge = SeriesMerge(SET, new_set_cell if cell != "dict" else dict)
    merge.add({"members": [text_member_hash(m) for m in "abc"]}, 1010.0, "a", 1000, ACCURACY)
    merge.add({"members": ["c", "d"]}, 1010.0, "old", 1000, ACCURACY)  # format 1: text
    merge.add({"members": [text_member_hash("e"), text_member_hash("a")]}, 1010.0, "b", 1000,
              ACCURACY)
    assert type(merge.cell()) is (new_set_cell if cell != "dict" else dict)
    assert sorted(merge.cell()) == sorted(text_member_hash(m) for m in "abcde")
    assert merge.stats(10.0, PERCENTILES, ACCURACY) == {"count": 5.0}


@pytest.mark.parametrize("partials", [False, True], ids=["no-partials", "partials"])
def test_only_a_daemon_sending_partials_loads_the_hll_library(partials: bool) -> None:
    """DataSketches imports numpy (~17 MB of RSS, ~0.3 s): a daemon without a `partials`
    forwarder never loads it; one with it loads it at start-up, before any snapshot fork."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "from global_helpers import manager\n"
        f"manager(1000, partials={partials})\n"
        "print('datasketches' in sys.modules, 'numpy' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60, check=True, cwd=Path(__file__).parent)
    assert result.stdout.split() == [str(partials), str(partials)], result.stderr
