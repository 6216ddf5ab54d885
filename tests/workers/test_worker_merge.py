"""The receive workers' merge without processes: each worker's table as partials, merged by
``SeriesMerge`` into one table, gives what one manager fed every sample gives; gauges follow
the arrival order across workers."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.ingest import Pipeline
from pystatsd.sample import Sample
from pystatsd.selfstats import SelfStats
from pystatsd.workers import gauge_order
from pystatsd.workers.gauge_order import TimedMetricMgr
from pystatsd.workers.merge import TableMerge, encode_table
from tests.line_caches import LINE_CACHES, SET_CELLS, pipelines_using, set_cells_of


def config(**overrides: Any) -> dict[str, Any]:
    return build_config({"timer_exact_samples": 50, **overrides})


def corpus(seed: int) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(3000):
        pick = rng.randrange(6)
        if pick == 0:
            samples.append(Sample(f"c{i % 40}", "counter", float(rng.randrange(1, 9)),
                                  rate=rng.choice([1.0, 0.5]), tags=(("env", "a"),)))
        elif pick == 1:
            samples.append(Sample(f"t{i % 30}", "timer", float(rng.randrange(1000))))
        elif pick == 2:  # past timer_exact_samples: sketched
            samples.append(Sample("big", "timer", rng.uniform(1, 500)))
        elif pick == 3:
            samples.append(Sample(f"h{i % 5}", "histogram", float(rng.randrange(100)),
                                  rate=0.25))
        elif pick == 4:
            samples.append(Sample(f"s{i % 10}", "set", f"m{rng.randrange(30)}"))
        else:
            samples.append(Sample("gd", "gauge", float(rng.choice([-1, 2])), delta=True))
    return samples


def finished(manager: MetricMgr, table: Any) -> dict[tuple[str, str], dict[str, float]]:
    return {(s.name, s.type): s.stats for s in manager.finish(table, 10.0)}


def test_partials_of_two_workers_merge_into_the_one_process_snapshot() -> None:
    samples = corpus(7)
    single = MetricMgr(config())
    workers = [TimedMetricMgr(config()), TimedMetricMgr(config())]
    for n, sample in enumerate(samples):
        assert single.add(sample)
        assert workers[n % 2].add(sample)
    parent = TimedMetricMgr(config())
    merge = TableMerge(parent)
    for worker in workers:
        merge.add_encoded(encode_table(worker.swap(), {}, worker.accuracy))
    merge.add_table(parent.swap())
    merged = finished(parent, merge.table(parent, SelfStats()))
    expected = finished(single, single.swap())
    assert merged.keys() == expected.keys()
    for key, stats in expected.items():
        if key == ("big", "timer"):  # sketched: exact moments, percentiles within accuracy
            for stat in ("count", "sum", "min", "max"):
                assert merged[key][stat] == pytest.approx(stats[stat], rel=1e-12)
            for stat in ("median", "p90", "p99"):
                assert merged[key][stat] == pytest.approx(stats[stat], rel=0.02)
        else:
            assert merged[key] == pytest.approx(stats, rel=1e-12), key


def ordered(monkeypatch: pytest.MonkeyPatch, steps: list[tuple[int, int, str]]) -> float:
    """Apply gauge lines (millisecond, worker, value) to two workers' managers with a clock
    that reads each line's millisecond; the merged value."""
    workers = [TimedMetricMgr(config()), TimedMetricMgr(config())]
    for at, worker, value in steps:
        monkeypatch.setattr(gauge_order.time, "monotonic_ns", lambda at=at: at * 1_000_000)
        gauge_order.stamp()  # as a worker does before each payload
        workers[worker].add(Sample("g", "gauge", float(value),
                                   delta=value[0] in "+-"))
    parent = TimedMetricMgr(config())
    merge = TableMerge(parent)
    for worker in workers:
        merge.add_encoded(encode_table(worker.swap(), {}, worker.accuracy))
    (series,) = parent.finish(merge.table(parent, SelfStats()), 10.0)
    return series.stats["value"]


def test_a_delta_after_another_workers_absolute_value_moves_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert ordered(monkeypatch, [(1, 0, "10"), (2, 1, "+5")]) == 15


def test_a_delta_before_another_workers_absolute_value_is_overridden(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert ordered(monkeypatch, [(1, 1, "+3"), (2, 0, "10"), (3, 1, "+5")]) == 15


def test_the_later_absolute_value_wins_with_the_deltas_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [(1, 0, "10"), (2, 1, "+1"), (3, 1, "20"), (4, 0, "+2"), (5, 0, "-7"),
             (6, 1, "+100")]
    assert ordered(monkeypatch, steps) == 115  # 20 set at 3, then +2 -7 +100


def test_deltas_alone_add_up_across_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ordered(monkeypatch, [(1, 0, "+1"), (2, 1, "+2"), (3, 0, "-4")]) == -1


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_gauge_lines_the_line_cache_takes_keep_their_arrival_order(
        monkeypatch: pytest.MonkeyPatch, line_cache: Any) -> None:
    """The lines after a shape's first go through the line cache (compiled or Python): it must
    update a worker's timed gauge cells through their own rules, or the merge loses the order."""
    steps = [(1, 0, b"g:1|g"), (2, 1, b"g:+1|g"), (3, 0, b"g:10|g"), (4, 1, b"g:+5|g"),
             (5, 1, b"g:+2|g"), (6, 0, b"other:1|c")]
    with pipelines_using(line_cache):
        workers = [TimedMetricMgr(config()), TimedMetricMgr(config())]
        pipelines = [Pipeline(config(), manager, SelfStats()) for manager in workers]
        for at, worker, line in steps:
            monkeypatch.setattr(gauge_order.time, "monotonic_ns", lambda at=at: at * 1_000_000)
            gauge_order.stamp()
            pipelines[worker].ingest(line, "statsd", False)
        assert all(pipeline._cache.hits for pipeline in pipelines)  # the cache took some
    parent = TimedMetricMgr(config())
    merge = TableMerge(parent)
    for worker in workers:
        merge.add_encoded(encode_table(worker.swap(), {}, worker.accuracy))
    values = {s.name: s.stats["value"] for s in parent.finish(merge.table(parent, SelfStats()),
                                                               10.0) if s.type == "gauge"}
    assert values == {"g": 17.0}  # 10 set at 3 ms, then +5 and +2 after it


@pytest.mark.parametrize("cells", SET_CELLS)
@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_a_sets_count_across_workers_is_the_exact_distinct_count(line_cache: Any,
                                                                  cells: Any) -> None:
    # Three workers each receive a share of one set's lines (every member several times,
    # shared between workers): their partials carry hashes, and the merged count is exact.
    members = [f"m{n}" for n in range(700)] + ["caf\u00e9", "cafe\u0301", "2001:db8::1"]
    rng = random.Random(5)
    lines = [b"users:%s|s|#env:a" % m.encode() for m in members for _ in range(3)]
    rng.shuffle(lines)
    with pipelines_using(line_cache), set_cells_of(cells):
        workers = [TimedMetricMgr(config()) for _ in range(3)]
        pipelines = [Pipeline(config(), worker, SelfStats()) for worker in workers]
        for n in range(0, len(lines), 20):
            pipelines[(n // 20) % 3].ingest(b"\n".join(lines[n:n + 20]))
        parent = TimedMetricMgr(config())
        merge = TableMerge(parent)
        for worker in workers:
            merge.add_encoded(encode_table(worker.swap(), {}, worker.accuracy))
        merge.add_table(parent.swap())
        table = merge.table(parent, SelfStats())
        assert type(table.series[("users", "set", (("env", "a"),))]) is cells
        assert finished(parent, table) == {("users", "set"): {"count": 703.0}}
