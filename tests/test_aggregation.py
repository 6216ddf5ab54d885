"""MetricMgr: the aggregation rules of every type, value by value."""

from __future__ import annotations

import ast
import gc
import math
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pystatsd import aggregation as aggregation_module
from pystatsd import distribution as distribution_module
from pystatsd.aggregation import LineCache, MetricMgr
from pystatsd.config import build_config
from pystatsd.decoders import parse_statsd_line
from pystatsd.distribution import Distribution, etsy_thresholds, percentile_key
from pystatsd.forked_snapshot import finish_forked
from pystatsd.ingest import Pipeline
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import ETSY_TIMER_STATS
from tests.line_caches import LINE_CACHES, MemberSet


def manager(**overrides: Any) -> MetricMgr:
    return MetricMgr(build_config({"forwarders": {}, **overrides}), SelfStats())


def flush(mgr: MetricMgr, interval: float = 10.0) -> dict[tuple[str, str, tuple], dict]:
    """Swap and finish; return {(name, type, tags): stats}."""
    return {(s.name, s.type, s.tags): s.stats for s in mgr.finish(mgr.swap(), interval)}


def only(result: dict, name: str, kind: str, tags: tuple = ()) -> dict:
    return result[(name, kind, tags)]


def test_counter_sums_value_over_sample_rate_and_reports_rate_per_real_second() -> None:
    mgr = manager()
    mgr.add(Sample("hits", COUNTER, 1.0))
    mgr.add(Sample("hits", COUNTER, 2.0, rate=0.5))
    mgr.add(Sample("hits", COUNTER, 3.0, rate=0.1))
    mgr.add(Sample("hits", COUNTER, -1.0))
    result = flush(mgr, interval=5.0)
    assert only(result, "hits", COUNTER) == {"count": 34.0, "rate": 34.0 / 5.0}


def test_counter_reports_only_intervals_with_samples() -> None:
    mgr = manager()
    mgr.add(Sample("hits", COUNTER, 1.0))
    assert ("hits", COUNTER, ()) in flush(mgr)
    assert flush(mgr) == {}


def test_series_differ_by_type_and_tags_and_finish_sorts_them() -> None:
    mgr = manager()
    mgr.add(Sample("b", COUNTER, 1.0))
    mgr.add(Sample("a", TIMER, 1.0))
    mgr.add(Sample("a", HISTOGRAM, 2.0))
    mgr.add(Sample("a", COUNTER, 1.0, tags=(("z", "1"),)))
    mgr.add(Sample("a", COUNTER, 1.0, tags=(("k", "1"),)))
    mgr.add(Sample("a", COUNTER, 1.0))
    series = mgr.finish(mgr.swap(), 10.0)
    assert [(s.name, s.type, s.tags) for s in series] == [
        ("a", COUNTER, ()),
        ("a", COUNTER, (("k", "1"),)),
        ("a", COUNTER, (("z", "1"),)),
        ("a", HISTOGRAM, ()),
        ("a", TIMER, ()),
        ("b", COUNTER, ()),
    ]
    assert series[3].stats["max"] == 2.0 and series[4].stats["max"] == 1.0


def test_gauge_keeps_last_value_and_applies_deltas_in_order() -> None:
    mgr = manager()
    mgr.add(Sample("load", GAUGE, 10.0))
    mgr.add(Sample("load", GAUGE, 5.0, delta=True))
    mgr.add(Sample("load", GAUGE, 3.0))  # an absolute value drops the deltas before it
    mgr.add(Sample("load", GAUGE, -1.5, delta=True))
    mgr.add(Sample("load", GAUGE, 7.0, rate=0.1))  # sample rates do not scale gauges
    mgr.add(Sample("load", GAUGE, 2.0, delta=True))
    assert only(flush(mgr), "load", GAUGE) == {"value": 9.0}


def test_gauge_deltas_carry_across_intervals_and_start_from_zero_when_unseen() -> None:
    mgr = manager()
    mgr.add(Sample("load", GAUGE, 10.0))
    mgr.add(Sample("fresh", GAUGE, -4.0, delta=True))
    first = flush(mgr)
    assert only(first, "load", GAUGE) == {"value": 10.0}
    assert only(first, "fresh", GAUGE) == {"value": -4.0}
    mgr.add(Sample("load", GAUGE, 2.5, delta=True))
    mgr.add(Sample("load", GAUGE, -0.5, delta=True))
    second = flush(mgr)
    assert only(second, "load", GAUGE) == {"value": 12.0}
    assert only(second, "fresh", GAUGE) == {"value": -4.0}  # carried, no sample


def test_gauge_is_reported_while_idle_then_expires_and_restarts_from_zero() -> None:
    mgr = manager(idle_expiry_intervals=3)
    mgr.add(Sample("load", GAUGE, 10.0))
    assert only(flush(mgr), "load", GAUGE) == {"value": 10.0}
    assert only(flush(mgr), "load", GAUGE) == {"value": 10.0}  # idle 1
    assert only(flush(mgr), "load", GAUGE) == {"value": 10.0}  # idle 2
    assert flush(mgr) == {}  # idle 3: expired
    mgr.add(Sample("load", GAUGE, 1.0, delta=True))
    assert only(flush(mgr), "load", GAUGE) == {"value": 1.0}


def test_gauge_sample_resets_idle_count() -> None:
    mgr = manager(idle_expiry_intervals=2)
    mgr.add(Sample("load", GAUGE, 10.0))
    flush(mgr)
    assert ("load", GAUGE, ()) in flush(mgr)  # idle 1
    mgr.add(Sample("load", GAUGE, 1.0, delta=True))
    assert only(flush(mgr), "load", GAUGE) == {"value": 11.0}
    assert ("load", GAUGE, ()) in flush(mgr)  # idle 1 again, not 2
    assert flush(mgr) == {}


def test_timer_exact_stats_with_nearest_rank_percentiles() -> None:
    mgr = manager(percentiles=[50, 90, 99, 99.9, 10])
    for value in [7.0, 1.0, 9.0, 3.0, 5.0, 10.0, 2.0, 8.0, 4.0, 6.0]:
        mgr.add(Sample("db", TIMER, value))
    stats = only(flush(mgr), "db", TIMER)
    assert stats == {
        "count": 10.0, "sum": 55.0, "min": 1.0, "max": 10.0, "mean": 5.5,
        "median": 5.5, "stddev": pytest.approx(math.sqrt(8.25), rel=1e-12),
        "p50": 5.0, "p90": 9.0, "p99": 10.0, "p99_9": 10.0, "p10": 1.0,
    }


def test_timer_nearest_rank_rounds_the_rank_up() -> None:
    mgr = manager(percentiles=[90, 7, 50])
    for value in range(1, 8):  # 7 values: p90 rank = ceil(6.3) = 7; p7 rank ceil(0.49) = 1
        mgr.add(Sample("db", TIMER, float(value)))
    for value in range(1, 101):  # 100 values: p7 is exactly rank 7, not 8
        mgr.add(Sample("db100", HISTOGRAM, float(value)))
    result = flush(mgr)
    assert only(result, "db", TIMER)["p90"] == 7.0
    assert only(result, "db", TIMER)["p7"] == 1.0
    assert only(result, "db", TIMER)["median"] == 4.0  # odd count: the middle value
    assert only(result, "db100", HISTOGRAM)["p7"] == 7.0
    assert only(result, "db100", HISTOGRAM)["p50"] == 50.0


def test_timer_sample_rate_weights_count_sum_and_percentiles() -> None:
    mgr = manager(percentiles=[50, 95])
    mgr.add(Sample("db", TIMER, 10.0, rate=0.1))  # stands for 10 samples of 10
    mgr.add(Sample("db", TIMER, 20.0))
    stats = only(flush(mgr), "db", TIMER)
    mean = 120.0 / 11.0
    assert stats == {
        "count": 11.0, "sum": 120.0, "min": 10.0, "max": 20.0, "mean": pytest.approx(mean),
        "median": 10.0,
        "stddev": pytest.approx(math.sqrt((10 * (10 - mean) ** 2 + (20 - mean) ** 2) / 11)),
        "p50": 10.0, "p95": 20.0,  # rank 10.45 of 11 passes the ten 10s
    }


def test_one_common_sample_rate_changes_only_count_and_sum() -> None:
    values = [random.Random(5).uniform(0, 100) for _ in range(51)]
    plain, sampled = manager(), manager()
    for value in values:
        plain.add(Sample("db", TIMER, value))
        sampled.add(Sample("db", TIMER, value, rate=0.25))
    unit = only(flush(plain), "db", TIMER)
    weighted = only(flush(sampled), "db", TIMER)
    assert weighted["count"] == 4 * unit["count"]
    assert weighted["sum"] == pytest.approx(4 * unit["sum"])
    for key in ("min", "max", "median", "p50", "p90", "p95", "p99"):
        assert weighted[key] == unit[key], key
    assert weighted["mean"] == pytest.approx(unit["mean"])
    assert weighted["stddev"] == pytest.approx(unit["stddev"])
    assert unit["stddev"] == pytest.approx(statistics.pstdev(values))
    assert unit["median"] == statistics.median(values)


def test_timer_stays_exact_up_to_the_limit() -> None:
    mgr = manager(timer_exact_samples=200, percentiles=[37, 90])
    rng = random.Random(3)
    values = [rng.uniform(1, 1000) for _ in range(200)]
    for value in values:
        mgr.add(Sample("db", TIMER, value))
    ordered = sorted(values)
    stats = only(flush(mgr), "db", TIMER)
    assert stats["p37"] == ordered[math.ceil(0.37 * 200) - 1]  # an exact sample, not a bucket
    assert stats["p90"] == ordered[179]


def test_timer_switches_to_a_sketch_past_the_limit_within_its_relative_accuracy() -> None:
    accuracy = 0.01
    mgr = manager(timer_exact_samples=100, sketch_relative_accuracy=accuracy,
                  percentiles=[50, 90, 99, 99.9])
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(20_000)]
    for value in values:
        mgr.add(Sample("db", TIMER, value))
    kept = mgr._table.series[("db", TIMER, ())]
    assert len(kept.values) <= 100  # memory stays bounded: the rest is in the sketch
    stats = only(flush(mgr), "db", TIMER)
    ordered = sorted(values)
    assert stats["count"] == 20_000.0
    assert stats["sum"] == pytest.approx(math.fsum(values), rel=1e-12)
    assert stats["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert stats["stddev"] == pytest.approx(statistics.pstdev(values), rel=1e-9)
    assert (stats["min"], stats["max"]) == (ordered[0], ordered[-1])
    for pct in (50, 90, 99, 99.9):
        exact = ordered[math.ceil(pct * len(ordered) / 100) - 1]
        key = "p" + str(pct).replace(".", "_")
        assert abs(stats[key] - exact) <= accuracy * exact * 1.001, (pct, stats[key], exact)
    assert abs(stats["median"] - statistics.median(values)) <= accuracy * stats["median"]


SKETCH_VALUES = st.lists(st.tuples(
    # magnitudes from 1e-3 to 1e6 (a key span of ~1,000 bins), either sign, and zero
    st.one_of(st.builds(lambda magnitude, negative: -magnitude if negative else magnitude,
                        st.floats(1e-3, 1e6), st.booleans()), st.just(0.0)),
    st.sampled_from([1.0, 2.0, 0.5, 10.0])), max_size=200)


def _store_state(store: Any) -> tuple[Any, ...]:
    return (list(store.bins), store.offset, store.min_key, store.max_key, store.count)


def _sketch_state(sketch: Any) -> tuple[Any, ...]:
    quantiles = [sketch.get_quantile_value(q) for q in (0.0, 0.01, 0.5, 0.9, 0.99, 1.0)]
    return (_store_state(sketch._store), _store_state(sketch._negative_store),
            sketch._zero_count, sketch.count, quantiles)


@settings(max_examples=60, deadline=None)
@given(SKETCH_VALUES, SKETCH_VALUES)
def test_the_array_store_keeps_the_bins_the_librarys_store_keeps(
        first: list[tuple[float, float]], second: list[tuple[float, float]]) -> None:
    """A folded timer's sketch keeps its bins in an array (8 bytes a bin, not a float
    object): it must count, shift, grow and merge exactly as the library's own."""
    from ddsketch import DDSketch

    ours, theirs = distribution_module.new_sketch(0.01), DDSketch(relative_accuracy=0.01)
    ours_b, theirs_b = distribution_module.new_sketch(0.01), DDSketch(relative_accuracy=0.01)
    for value, weight in first:
        ours.add(value, weight)
        theirs.add(value, weight)
    for value, weight in second:
        ours_b.add(value, weight)
        theirs_b.add(value, weight)
    assert _sketch_state(ours) == _sketch_state(theirs)
    mixed = distribution_module.new_sketch(0.01)
    mixed.merge(theirs_b)  # a list-backed sketch (a partial's, decoded) into an array one
    assert _sketch_state(mixed) == _sketch_state(theirs_b)
    ours.merge(ours_b)
    theirs.merge(theirs_b)
    assert _sketch_state(ours) == _sketch_state(theirs)


def test_a_folded_timer_survives_the_hot_restarts_pickle_and_the_partials_protobuf() -> None:
    import pickle

    from pystatsd.global_tier.partial_state import sketch_bytes, sketch_from_bytes

    cell = Distribution()
    for value in range(1, 300):
        cell.add(value * 1.5, 1.0, 100, 0.01)
    assert cell.sketch is not None
    again = pickle.loads(pickle.dumps(cell))
    assert _sketch_state(again.sketch) == _sketch_state(cell.sketch)
    decoded = sketch_from_bytes(sketch_bytes(cell))  # its own layout: compare key -> count

    def counts(sketch: Any) -> tuple[dict[int, float], list[float]]:
        store = sketch._store
        return ({store.offset + index: count for index, count in enumerate(store.bins) if count},
                [sketch.get_quantile_value(q) for q in (0.0, 0.5, 0.99, 1.0)])

    assert counts(decoded)[0] == counts(cell.sketch)[0]
    assert len(counts(decoded)[0]) > 100
    # the mapping's parameters cross as doubles, so its values may move in the last digits
    assert counts(decoded)[1] == pytest.approx(counts(cell.sketch)[1], rel=1e-12)


def test_sketch_keeps_weights() -> None:
    mgr = manager(timer_exact_samples=10, percentiles=[50])
    for _ in range(100):
        mgr.add(Sample("db", TIMER, 1000.0, rate=0.01))  # 10,000 samples of 1000
    for _ in range(100):
        mgr.add(Sample("db", TIMER, 1.0))  # 100 samples of 1
    stats = only(flush(mgr), "db", TIMER)
    assert stats["count"] == 10_100.0
    assert stats["p50"] == pytest.approx(1000.0, rel=0.01)
    assert stats["min"] == 1.0


def test_set_counts_unique_members_per_interval() -> None:
    mgr = manager()
    for member in ["alice", "bob", "alice", "carol", "bob"]:
        mgr.add(Sample("users", SET, member, rate=0.5))
    assert only(flush(mgr), "users", SET) == {"count": 3.0}
    mgr.add(Sample("users", SET, "alice"))
    assert only(flush(mgr), "users", SET) == {"count": 1.0}
    assert flush(mgr) == {}


def test_set_members_stay_out_of_the_cyclic_gc_on_both_paths() -> None:
    # A full collection walking every member of every set held the GIL for ~100 ms at 10,000
    # series (docs/performance.md, Snapshot cost): set cells must stay invisible to the GC.
    mgr = manager()
    pipeline = Pipeline(build_config({"forwarders": {}}), mgr, SelfStats())
    for member in range(50):
        pipeline.ingest(f"fast:u{member}|s\nfast:u{member}|s".encode())
        mgr.add(Sample("slow", SET, f"u{member}"))
    table = mgr.swap()
    cells = [table.series[(name, SET, ())] for name in ("fast", "slow")]
    assert [len(cell) for cell in cells] == [50, 50]
    assert not any(gc.is_tracked(cell) for cell in cells)
    result = {(s.name, s.type): s.stats for s in mgr.finish(table, 10.0)}
    assert result == {("fast", SET): {"count": 50.0}, ("slow", SET): {"count": 50.0}}


def test_trace_counts_events_per_interval() -> None:
    mgr = manager()
    tags = (("stage", "init"),)
    for _ in range(3):
        mgr.add(Sample("broker.trace", TRACE, 1.0, tags=tags))
    mgr.add(Sample("broker.trace", TRACE, 1.0, rate=0.5, tags=tags))
    assert only(flush(mgr), "broker.trace", TRACE, tags) == {"count": 5.0}
    mgr.add(Sample("broker.trace", TRACE, 1.0, tags=tags))
    assert only(flush(mgr), "broker.trace", TRACE, tags) == {"count": 1.0}
    assert flush(mgr) == {}


def test_cumulative_trace_counts_since_the_series_appeared_until_idle_expiry() -> None:
    mgr = manager(trace_cumulative=True, idle_expiry_intervals=2)
    for _ in range(2):
        mgr.add(Sample("t", TRACE, 1.0))
    assert only(flush(mgr), "t", TRACE) == {"count": 2.0}
    for _ in range(3):
        mgr.add(Sample("t", TRACE, 1.0))
    assert only(flush(mgr), "t", TRACE) == {"count": 5.0}
    assert only(flush(mgr), "t", TRACE) == {"count": 5.0}  # idle 1: still reported
    assert flush(mgr) == {}  # idle 2: expired
    mgr.add(Sample("t", TRACE, 1.0))
    assert only(flush(mgr), "t", TRACE) == {"count": 1.0}


def test_max_series_drops_new_series_counts_them_and_keeps_known_ones() -> None:
    stats = SelfStats()
    mgr = MetricMgr(build_config({"forwarders": {}, "max_series": 2}), stats)
    assert mgr.add(Sample("a", COUNTER, 1.0))
    assert mgr.add(Sample("b", GAUGE, 1.0))
    assert not mgr.add(Sample("c", COUNTER, 1.0))
    assert not mgr.add(Sample("a", GAUGE, 1.0))  # same name, other type: another series
    assert mgr.add(Sample("a", COUNTER, 2.0))
    assert mgr.series_count() == 2
    assert stats.take()["rejected.too_many_series"] == 2
    result = flush(mgr)
    assert set(result) == {("a", COUNTER, ()), ("b", GAUGE, ())}
    assert only(result, "a", COUNTER)["count"] == 3.0
    assert mgr.series_count() == 0
    assert mgr.add(Sample("c", COUNTER, 1.0))  # a new interval has room again


def test_a_sample_that_would_overflow_is_rejected_and_the_others_still_count() -> None:
    mgr = manager(trace_cumulative=False)
    accepted = [mgr.add(sample) for sample in [
        Sample("hits", COUNTER, 1e308), Sample("hits", COUNTER, 1e308),  # the sum: rejected
        Sample("hits", COUNTER, 1.0, rate=5e-324),  # 1 / rate is infinite: rejected
        Sample("hits", COUNTER, 0.0, rate=5e-324),  # 0 * inf is nan: rejected
        Sample("hits", COUNTER, 2.0, rate=0.5),
        Sample("load", GAUGE, 1e308), Sample("load", GAUGE, 1e308, delta=True),  # rejected
        Sample("load", GAUGE, -1.0, delta=True),
        Sample("drift", GAUGE, -1e308, delta=True), Sample("drift", GAUGE, -1e308, delta=True),
        Sample("db", TIMER, 1e101), Sample("db", TIMER, -1e200),  # past ±1e100: rejected
        Sample("db", TIMER, 3.0), Sample("db", TIMER, 1.0, rate=1e-101),  # weight past 1e100
        Sample("db", TIMER, 5.0, rate=0.5),
        Sample("size", HISTOGRAM, 1e100), Sample("size", HISTOGRAM, 1e100),
        Sample("events", TRACE, 1.0, rate=1e-308), Sample("events", TRACE, 1.0, rate=1e-308),
    ]]
    assert accepted.count(False) == 9
    assert mgr.stats.counters["rejected.overflow"] == 9
    result = flush(mgr)
    assert only(result, "hits", COUNTER)["count"] == 1e308 + 4.0
    assert only(result, "load", GAUGE)["value"] == 1e308 - 1.0
    assert only(result, "drift", GAUGE)["value"] == -1e308
    db = only(result, "db", TIMER)
    assert (db["count"], db["sum"], db["min"], db["max"]) == (3.0, 13.0, 3.0, 5.0)
    size = only(result, "size", HISTOGRAM)
    assert size["sum"] == 2e100 and size["stddev"] == 0.0
    assert only(result, "events", TRACE)["count"] == 1e308
    assert all(math.isfinite(value) for stats in result.values() for value in stats.values())
    assert "flush.non_finite" not in mgr.stats.counters


def test_a_statistic_the_update_rules_cannot_bound_is_never_flushed() -> None:
    mgr = manager()
    mgr.add(Sample("hits", COUNTER, 1e308))
    mgr.add(Sample("ok", COUNTER, 1.0))
    mgr.add(Sample("load", GAUGE, 1e308))
    # A rate over a nanosecond-long interval (a stop right at a deadline) would be infinite.
    result = flush(mgr, interval=1e-9)
    assert set(result) == {("ok", COUNTER, ()), ("load", GAUGE, ())}
    assert mgr.stats.counters["flush.non_finite"] == 1
    # Deltas checked against this interval's cell alone meet a carried value at the flush:
    # they are undone, the carried value kept.
    mgr.add(Sample("load", GAUGE, 1e308, delta=True))
    result = flush(mgr)
    assert only(result, "load", GAUGE) == {"value": 1e308}
    assert mgr.stats.counters["flush.non_finite"] == 2
    mgr.add(Sample("load", GAUGE, -1.0, delta=True))
    assert only(flush(mgr), "load", GAUGE) == {"value": 1e308 - 1.0}


def test_carried_gauges_and_traces_count_toward_max_series() -> None:
    mgr = manager(max_series=4, trace_cumulative=True)
    for name in ("g1", "g2"):
        assert mgr.add(Sample(name, GAUGE, 1.0))
    assert mgr.add(Sample("t1", TRACE, 1.0))
    assert mgr.add(Sample("c1", COUNTER, 1.0))
    # Between the swap and the end of finish (another thread's work) the table's gauges and
    # traces may all be carried on: a burst straddling the flush is counted against them.
    finished = mgr.swap()
    assert mgr.series_held() == 3
    assert mgr.add(Sample("c2", COUNTER, 1.0))
    assert not mgr.add(Sample("c3", COUNTER, 1.0))
    assert len(mgr.finish(finished, 10.0)) == 4
    assert mgr.series_levels() == {"series.held": 4.0, "series.carried": 3.0,
                                   "series.limit": 4.0}
    assert mgr.add(Sample("g1", GAUGE, 2.0))  # carried: held already, at the limit or not
    assert mgr.add(Sample("t1", TRACE, 1.0))
    assert not mgr.add(Sample("g3", GAUGE, 1.0))
    assert mgr.stats.counters["rejected.too_many_series"] == 2
    result = flush(mgr)
    assert len(result) == 4  # c2 and the three carried: never more than max_series
    assert only(result, "g1", GAUGE) == {"value": 2.0}
    assert only(result, "t1", TRACE) == {"count": 2.0}


def test_a_fill_warning_is_logged_once_past_the_documented_level(
        caplog: pytest.LogCaptureFixture) -> None:
    mgr = manager(max_series=10)
    for i in range(7):
        mgr.add(Sample(f"g{i}", GAUGE, 1.0))
    assert not [r for r in caplog.records if "of max_series" in r.getMessage()]
    for i in range(7, 12):
        mgr.add(Sample(f"g{i}", GAUGE, 1.0))
    warnings = [r.getMessage() for r in caplog.records if "of max_series" in r.getMessage()]
    assert warnings == ["8 series held, 80% of max_series (10): new series will be dropped as "
                        "too_many_series past it; raise max_series (about 1 KB of RSS a series, "
                        "see docs/reliability.md) or find the names that explode"]
    assert mgr.stats.counters["rejected.too_many_series"] == 2


def test_carried_tables_shrink_after_a_burst_of_names_expires() -> None:
    mgr = manager(idle_expiry_intervals=2, trace_cumulative=True)
    for i in range(20_000):
        mgr.add(Sample(f"burst.{i}", GAUGE, 1.0))
        mgr.add(Sample(f"burst.{i}", TRACE, 1.0))
    flush(mgr)
    full = sys.getsizeof(mgr._gauges), sys.getsizeof(mgr._traces)
    for _ in range(2):
        mgr.add(Sample("steady", GAUGE, 1.0))
        mgr.add(Sample("steady", TRACE, 1.0))
        result = flush(mgr)
    assert set(result) == {("steady", GAUGE, ()), ("steady", TRACE, ())}
    assert len(mgr._gauges) == len(mgr._traces) == 1
    assert sys.getsizeof(mgr._gauges) * 100 < full[0]
    assert sys.getsizeof(mgr._traces) * 100 < full[1]
    assert mgr.series_levels()["series.carried"] == 2.0
    assert mgr.memory_generation > 0  # the line cache lets go of the burst's keys and cells


def test_swap_hands_back_the_finished_table_and_starts_empty() -> None:
    mgr = manager()
    mgr.add(Sample("a", COUNTER, 1.0))
    finished = mgr.swap()
    mgr.add(Sample("a", COUNTER, 5.0))  # lands in the new interval
    assert len(finished) == 1 and mgr.series_count() == 1
    assert mgr.finish(finished, 10.0)[0].stats["count"] == 1.0
    assert only(flush(mgr), "a", COUNTER)["count"] == 5.0


def nearest_rank(ordered: list[float], pct: float) -> float:
    """Reference: the ⌈pct/100 · n⌉-th smallest sample, from a plain sort."""
    rank = max(1, math.ceil(pct * len(ordered) / 100.0 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@pytest.mark.parametrize("offset", [0.0, 1e9])
def test_timer_stats_match_a_plain_reference_for_many_sizes_and_shapes(offset: float) -> None:
    # Sizes around the median's odd/even switch and a percentile's rank boundaries, ties,
    # and (offset 1e9) values whose spread is tiny against their size, where a careless
    # Σx² - n·mean² stddev loses every digit.
    rng = random.Random(7)
    percentiles = [50, 75, 90, 95, 99, 99.9, 1]
    mgr = manager(percentiles=percentiles)
    expected = {}
    for size in [1, 2, 3, 4, 5, 7, 10, 99, 100, 101, 500, 999, 1000]:
        for shape in ("uniform", "ties", "sorted"):
            if shape == "uniform":
                values = [offset + rng.uniform(0, 500) for _ in range(size)]
            elif shape == "ties":
                values = [offset + rng.randrange(4) for _ in range(size)]
            else:
                values = [offset + 0.001 * i for i in range(size)]
            name = f"t{size}.{shape}"
            for value in values:
                mgr.add(Sample(name, TIMER, value))
            expected[name] = sorted(values)
    result = flush(mgr)
    for name, ordered in expected.items():
        stats = only(result, name, TIMER)
        assert stats["count"] == len(ordered)
        assert stats["min"] == ordered[0] and stats["max"] == ordered[-1]
        assert stats["sum"] == pytest.approx(math.fsum(ordered), rel=1e-12)
        assert stats["mean"] == pytest.approx(statistics.fmean(ordered), rel=1e-12)
        assert stats["median"] == statistics.median(ordered)
        assert stats["stddev"] == pytest.approx(statistics.pstdev(ordered), rel=1e-9, abs=1e-9)
        for pct in percentiles:
            assert stats[percentile_key(pct)] == nearest_rank(ordered, pct), (name, pct)


# -- LineCache: the fast path applies MetricMgr.update's rules, inlined ------------------------
# A rule changed in MetricMgr.update but not in LineCache.apply (or the reverse) makes these
# fail: both are fed the same lines and must leave the very same cells. Each runs against both
# line caches, the pure-Python reference and the compiled one.

def cell_state(cell: Any) -> Any:
    """What a cell holds, comparable with ==."""
    if isinstance(cell, Distribution):
        return (cell.values.tolist(), cell.weighted, cell.count, cell.total, cell.low,
                cell.high, cell.mean, cell.m2, cell.sketch is not None,
                cell.sketch.count if cell.sketch is not None else 0.0)
    if isinstance(cell, dict | MemberSet):  # a set: its members' hashes, in no order
        return ("set", sorted(cell))
    return list(cell)


def cells_both_ways(lines: list[bytes], line_cache: Any = LineCache,
                    **config: Any) -> tuple[dict, dict, int]:
    """The cells after ``lines`` through ``line_cache`` (the first line of each shape is
    decoded and remembered, the rest served by the cache) and through MetricMgr.add alone."""
    built = build_config({"forwarders": {}, **config})
    fast, slow = MetricMgr(built, SelfStats()), MetricMgr(built, SelfStats())
    cache = line_cache(fast)
    served = 0
    for line in lines:
        missed = cache.apply([line])
        if missed is None:
            served += 1
            continue
        samples = parse_statsd_line(line)
        for sample in samples:
            fast.add(sample)
        if len(samples) == 1 and samples[0].timestamp is None:
            cache.remember(line, samples[0])
    for line in lines:
        for sample in parse_statsd_line(line):
            slow.add(sample)
    # The same rejects both ways, too (an overflow is refused by each path on its own).
    assert fast.stats.counters == slow.stats.counters
    return ({key: cell_state(cell) for key, cell in fast.swap().series.items()},
            {key: cell_state(cell) for key, cell in slow.swap().series.items()}, served)


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_line_cache_and_metric_mgr_update_reject_the_same_overflows(line_cache: Any) -> None:
    lines = [
        b"hits:1e308|c", b"hits:1e308|c", b"hits:1|c", b"hits:1|c|@5e-324", b"hits:1e308|c",
        b"big:9|c", b"big:9|c", b"big:1e308|c", b"big:1e308|c",  # whole-line counters too
        b"load:1e308|g", b"load:+1e308|g", b"load:-1|g", b"drift:+1e308|g", b"drift:+1e308|g",
        b"db:1e200|ms", b"db:-1e101|ms", b"db:5|ms", b"db:1|ms|@1e-200", b"db:6|h",
    ]
    fast, slow, served = cells_both_ways(lines * 3, line_cache)
    assert served > len(lines)
    assert fast == slow
    assert fast[("hits", COUNTER, ())] == [1e308 + 3.0]
    assert fast[("big", COUNTER, ())] == [1e308 + 54.0]
    assert fast[("load", GAUGE, ())] == [1e308, -1.0]  # each repeat sets 1e308 again


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_line_cache_leaves_the_cells_metric_mgr_update_leaves_for_every_type(
        line_cache: Any) -> None:
    lines = [
        b"hits:1|c", b"hits:1|c", b"hits:2|c", b"hits:0.5|c|@0.5", b"hits:3|c|@0.5",
        b"hits:-4|c", b"hits:1e2|c|#a:1",
        b"load:10|g", b"load:+5|g", b"load:-2.5|g", b"load:3|g", b"load:+1|g", b"load:-0|g",
        b"drift:+1|g", b"drift:-3|g", b"drift:+2|g",  # deltas only: the base stays unknown
        b"db:12.5|ms", b"db:3|ms", b"db:7|ms", b"db:1|ms|@0.1", b"db:2|ms|@0.1", b"db:9|ms",
        b"size:4|h", b"size:5|h", b"size:6|d", b"size:7|d",
        b"users:alice|s", b"users:bob|s", b"users:alice|s", b"users:caf\xc3\xa9|s",
        b"users:1|s", b"users:1.0|s",  # members are strings: 1 and 1.0 are two members
    ]
    fast, slow, served = cells_both_ways(lines * 3, line_cache, timer_exact_samples=5)
    assert served >= 2 * len(lines)  # all but the first of each shape came from the cache
    assert fast == slow
    assert {kind for _, kind, _ in fast} == {COUNTER, GAUGE, TIMER, HISTOGRAM, SET}
    assert fast[("drift", GAUGE, ())] == [None, 0.0]  # +1 -3 +2, three times over
    assert fast[("db", TIMER, ())][8]  # past timer_exact_samples: folded into a sketch


SHAPES = st.sampled_from([b"n:%s|c", b"n:%s|c|@0.25", b"g:%s|g", b"t:%s|ms", b"t:%s|ms|@0.5",
                          b"h:%s|h", b"s:%s|s", b"s:%s|s|#k:v", b"n:%s|c|@5e-324",
                          b"t:%s|ms|@1e-200"])
NUMBERS = st.sampled_from([b"1", b"0", b"-1", b"+1", b"2.5", b"-0.5", b"+0.25", b"1e2", b"7",
                           b"-3", b"+10", b"42", b"1e308", b"-1e308", b"+1e308", b"1e200"])


@pytest.mark.parametrize("line_cache", LINE_CACHES)
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(SHAPES, NUMBERS), min_size=1, max_size=60))
def test_line_cache_and_metric_mgr_update_agree_on_any_sequence(line_cache: Any,
                                                                 lines: list) -> None:
    payload = [shape % value for shape, value in lines]
    fast, slow, _ = cells_both_ways(payload * 2, line_cache, timer_exact_samples=7)
    assert fast == slow


def test_aggregation_does_not_depend_on_the_receive_side() -> None:
    # The boundary is one-way: ingest uses aggregation, never the reverse (no import, so no
    # callback into the pipeline either).
    receive_side = ("pystatsd.ingest", "pystatsd.decoders", "pystatsd.tagging",
                    "pystatsd.listeners", "pystatsd.daemon", "forwarders")
    for module in (aggregation_module, distribution_module):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        assert not {name for name in imported if name.startswith(receive_side)}, module


# -- Etsy's extra timer statistics (asked for by a forwarder: Forwarder.needed_stats) ---------
def etsy_manager(**overrides: Any) -> MetricMgr:
    mgr = manager(**overrides)
    mgr.extra_stats = frozenset({ETSY_TIMER_STATS})
    return mgr


def test_extra_timer_stats_are_computed_only_when_a_forwarder_asks() -> None:
    for mgr, asked in ((manager(), False), (etsy_manager(), True)):
        for value in (1.0, 2.0):
            mgr.add(Sample("t", TIMER, value))
            mgr.add(Sample("h", HISTOGRAM, value))
        mgr.add(Sample("c", COUNTER, 1.0))
        for series in mgr.finish(mgr.swap(), 10.0):
            assert (series.extra_stats is not None) == (asked and series.type != COUNTER)


def test_etsy_thresholds_take_the_rounded_share_of_sorted_samples_each_once() -> None:
    mgr = etsy_manager(percentiles=[10, 50, 90, 99.9])
    for value in (3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0):
        mgr.add(Sample("t", TIMER, value))
    mgr.add(Sample("t", TIMER, 7.0, rate=0.25))  # counted 4 times in count, once here
    (series,) = mgr.finish(mgr.swap(), 10.0)
    assert series.stats["count"] == 12.0
    assert series.extra_stats == {
        "sum_squares": 1 + 1 + 4 + 9 + 16 + 25 + 36 + 81 + 4 * 49,  # weighted, like sum
        # 9 samples: 10% -> round(0.9) = 1, 50% -> round(4.5) = 5 (half up, as JavaScript)
        "count_10": 1.0, "mean_10": 1.0, "upper_10": 1.0, "sum_10": 1.0, "sum_squares_10": 1.0,
        "count_50": 5.0, "mean_50": 11 / 5, "upper_50": 4.0, "sum_50": 11.0,
        "sum_squares_50": 31.0,
        "count_90": 8.0, "mean_90": 29 / 8, "upper_90": 7.0, "sum_90": 29.0,
        "sum_squares_90": 141.0,
        "count_99_9": 9.0, "mean_99_9": 38 / 9, "upper_99_9": 9.0, "sum_99_9": 38.0,
        "sum_squares_99_9": 222.0}


def test_etsy_thresholds_of_one_sample_none_taken_and_a_negative_threshold() -> None:
    assert etsy_thresholds([4.0], [10]) == {"sum_squares": 16.0, "count_10": 1.0,
                                            "mean_10": 4.0, "upper_10": 4.0, "sum_10": 4.0,
                                            "sum_squares_10": 16.0}
    # round(0.3) = 0: Etsy writes nothing of the threshold
    assert etsy_thresholds([1.0, 2.0, 3.0], [10]) == {"sum_squares": 14.0}
    # Etsy's percentThreshold -50: the top half, named "top" (lower_top50 is their smallest);
    # -100 takes all (where Etsy's own subtraction reads past its array and writes NaN)
    assert etsy_thresholds([1.0, 2.0, 3.0, 4.0], [-50, -100]) == {
        "sum_squares": 30.0,
        "count_top50": 2.0, "mean_top50": 3.5, "lower_top50": 3.0, "sum_top50": 7.0,
        "sum_squares_top50": 25.0,
        "count_top100": 4.0, "mean_top100": 2.5, "lower_top100": 1.0, "sum_top100": 10.0,
        "sum_squares_top100": 30.0}


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_etsy_thresholds_past_the_cap_stay_within_the_sketch_accuracy(rate: float) -> None:
    accuracy = 0.01
    mgr = etsy_manager(percentiles=[50, 90, 99.9], timer_exact_samples=100,
                       sketch_relative_accuracy=accuracy)
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(5000)]
    for value in values:
        mgr.add(Sample("t", TIMER, value, rate=rate))
    (series,) = mgr.finish(mgr.swap(), 10.0)
    extra = series.extra_stats
    assert extra is not None
    # What the same samples give exactly, each weighed 1 / rate as the sketch weighs them.
    exact = etsy_thresholds(sorted(values * int(1 / rate)), [50, 90, 99.9])
    assert set(extra) == set(exact)
    assert extra["sum_squares"] == pytest.approx(math.fsum(v * v for v in values) / rate,
                                                 rel=1e-9)
    del exact["sum_squares"]
    for key, value in exact.items():
        bound = 0.0 if key.startswith("count_") else (
            2 * accuracy + accuracy ** 2 if key.startswith("sum_squares") else accuracy)
        assert abs(extra[key] - value) <= bound * abs(value) + 1e-9, key


def test_a_passed_through_stamped_timer_has_the_extra_stats_too() -> None:
    mgr = etsy_manager(late_samples="pass", percentiles=[50])
    stamp = time.time() - 120
    for value in (2.0, 4.0):
        mgr.add(Sample("t", TIMER, value, timestamp=stamp))
    (series,) = mgr.finish(mgr.swap(), 10.0)
    assert series.timestamp == math.floor(stamp)
    assert series.extra_stats == {"sum_squares": 20.0, "count_50": 1.0, "mean_50": 2.0,
                                  "upper_50": 2.0, "sum_50": 2.0, "sum_squares_50": 4.0}


def test_the_forked_snapshot_brings_the_extra_stats_back() -> None:
    mgr = etsy_manager(percentiles=[90])
    for value in range(1, 11):
        mgr.add(Sample("t", TIMER, float(value)))
    table = mgr.swap()
    (series,) = finish_forked(mgr, table, 10.0, threading.Lock())
    assert series.extra_stats is not None and series.extra_stats["mean_90"] == 5.0
    assert series.extra_stats["sum_squares"] == 385.0


def test_etsy_histogram_bins_from_histogram_buckets_count_below_each_bound_once() -> None:
    mgr = etsy_manager(histogram_buckets=[{"match": "db.*", "buckets": [7, 3]}],
                       percentiles=[50])
    for value in range(1, 11):
        mgr.add(Sample("db.query", TIMER, float(value)))
        mgr.add(Sample("api.call", TIMER, float(value)))
    mgr.add(Sample("db.query", TIMER, 0.5, rate=0.1))  # in bin_3 once, as in Etsy
    by_name = {s.name: s for s in mgr.finish(mgr.swap(), 10.0)}
    extra = by_name["db.query"].extra_stats
    assert extra is not None
    # [.., 3) and [3, 7); 7 and above are in no bin without an infinite bound
    assert (extra["histogram.bin_3"], extra["histogram.bin_7"]) == (3.0, 4.0)
    assert by_name["db.query"].stats["le_3"] == 13.0  # our own buckets: <= 3, weighted
    assert not [key for key in by_name["api.call"].extra_stats or {} if "bin_" in key]


def test_etsy_histogram_bins_past_the_cap_come_from_the_sketch() -> None:
    mgr = etsy_manager(histogram_buckets=[{"match": "t", "buckets": [100, 200, math.inf]}],
                       timer_exact_samples=100, sketch_relative_accuracy=0.01)
    rng = random.Random(3)
    values = [rng.uniform(0, 400) for _ in range(4000)]
    for value in values:
        mgr.add(Sample("t", TIMER, value))
    (series,) = mgr.finish(mgr.swap(), 10.0)
    extra = series.extra_stats
    assert extra is not None
    exact = [sum(v < 100 for v in values), sum(100 <= v < 200 for v in values),
             sum(v >= 200 for v in values)]
    got = [extra["histogram.bin_100"], extra["histogram.bin_200"], extra["histogram.bin_inf"]]
    assert sum(got) == pytest.approx(4000)

    def near(bound: float) -> int:  # the samples the sketch may put on either side of it
        return sum(abs(v - bound) <= 0.01 * bound for v in values)

    allowed = [near(100), near(100) + near(200), near(200)]
    assert all(abs(g - e) <= a for g, e, a in zip(got, exact, allowed, strict=True)), \
        (got, exact, allowed)
