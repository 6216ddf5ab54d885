"""The ingest pipeline: the fast path gives exactly what the decoders + tagger + MetricMgr give,
counts what it sees, hands raw lines to relays, and never loses good lines beside bad ones."""

from __future__ import annotations

import gc
import signal
import threading
import time
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarders import ForwarderContext, RelayForwarder
from pystatsd import aggregation as aggregation_module
from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.decoders import decode_payload
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import SeriesStats
from pystatsd.tagging import Tagger
from tests.line_caches import LINE_CACHES, pipelines_using

BASE = {"forwarders": {}, "agent": {"tags": {"host": "h1", "env": "prod"}},
        "timer_exact_samples": 4, "percentiles": [50, 90, 99.9]}


def by_slow_path(config: dict, intervals: list[list[bytes]]) -> tuple[list[list[SeriesStats]],
                                                                     dict]:
    """The reference: decode_payload, the tagger, MetricMgr.add, nothing cached."""
    built = build_config(config)
    stats = SelfStats()
    manager = MetricMgr(built, stats)
    tagger = Tagger(built["agent"]["tags"], built["tag_precedence"])
    snapshots = []
    for payloads in intervals:
        for payload in payloads:
            events: list = []
            for sample in decode_payload(payload, stats, events=events):
                manager.add(sample._replace(tags=tagger.apply(sample.tags)))
            for event in events:
                manager.add_event(event)
        snapshots.append(manager.finish(manager.swap(), 10.0))
    return snapshots, rejects(stats)


def by_pipeline(config: dict, intervals: list[list[bytes]], line_cache: Any = None
                ) -> tuple[list[list[SeriesStats]], dict, Pipeline]:
    """Through the pipeline, with ``line_cache`` if given, else the one selected."""
    built = build_config(config)
    stats = SelfStats()
    manager = MetricMgr(built)
    if line_cache is None:
        pipeline = Pipeline(built, manager, stats)
    else:
        with pipelines_using(line_cache):
            pipeline = Pipeline(built, manager, stats)
    snapshots = []
    for payloads in intervals:
        for payload in payloads:
            pipeline.ingest(payload)
        pipeline.publish_counts()  # as the daemon does, just before the swap
        snapshots.append(manager.finish(manager.swap(), 10.0))
    return snapshots, rejects(stats), pipeline


def rejects(stats: SelfStats) -> dict:
    return {k: v for k, v in stats.counters.items() if k.startswith("rejected.")}


CORPUS = [
    b"api.hits:1|c\napi.hits:2|c|@0.5\napi.hits:3|c|@0.1|#b:2,a:1\napi.hits:4|c|#a:1,b:2\n",
    b"api.hits:1|c\napi.hits,a=1,b=2:5|c\napi.hits:1.5e1|c|@0.25\n",
    b"load:10|g\nload:+5|g\nload:-2.5|g\nload:3|g\nload:-1|g|#x:y\nload:+4|g|@0.5\n",
    b"load:+1|g\nnewgauge:-4|g\n",
    b"db:12.5|ms\ndb:3|ms\ndb:7|ms|@0.1\ndb:1:2:3|ms\ndb:9|h\ndb:8|d\ndb:100|ms\n",
    b"db:1|ms\ndb:2|ms\ndb:3|ms\ndb:4|ms\ndb:5|ms\ndb:6|ms|@0.5\n",
    b"users:alice|s\nusers:bob|s\nusers:alice|s\nusers:[::1]:80|s\nusers:caf\xc3\xa9|s\n",
    # values the decoder's grammar refuses even though float() takes them
    b"api.hits:1_0|c\napi.hits: 1|c\napi.hits:nan|c\napi.hits:inf|g\napi.hits:1e999|ms\n",
    b"api.hits:0x10|c\napi.hits:|c\nusers:|s\nusers:\xff\xfe|s\napi.hits:1.2.3|c\n",
    b"api.hits:" + b"9" * 400 + b"|c\napi.hits:+7|c\napi.hits:-.5|c\napi.hits:5.|c\n",
    # finite values whose aggregate would not be: rejected as overflow, the rest still counts
    b"big:1e308|c\nbig:1e308|c\nbig:1|c|@5e-324\nbig:2|c\nload:+1e308|g\nload:+1e308|g\n",
    b"db:1e200|ms\ndb:4|ms\ndb:1|ms|@1e-300\nbig:1e308|c\nbig:2|c\n",
    # shapes that must stay on the slow path
    b"stamp:1|c|T1700000000\nstamp:2|c|T1700000000\nbad line\n\n\nx|y:1|c\nnotype:1|\n",
    b"api.hits:1|c\r\napi.hits:2|c\r\n  api.hits:3|c  \n\tload:9|g\n",
    b"api.hits:1|c|@2\napi.hits:1|c|@0\napi.hits:1|zz\n_e{5,4}:title|text\n",
    b'{"metric_name":"j","metric_type":"counter","value":2,"env":"dev"}',
    b'[{"metric_name":"j","metric_type":"timer","value":2},{"metric_name":"j"}]',
    b'api.hits:1|c\n{"metric_name":"j","metric_type":"gauge","value":3}\n{bad json\n',
    b"{curly:1|c\n{curly:2|c\n",
    b"  api.hits:1|c\napi.hits:1|c\n",
    b"",
    b"\n",
]


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_fast_path_equals_slow_path_on_the_corpus_over_several_intervals(line_cache: Any) -> None:
    intervals = [CORPUS, CORPUS[::-1], CORPUS[:4], []]
    fast, fast_rejects, pipeline = by_pipeline(BASE, intervals, line_cache)
    slow, slow_rejects = by_slow_path(BASE, intervals)
    assert pipeline.cached_shapes > 10  # the fast path did run
    assert fast == slow
    assert fast_rejects == slow_rejects
    assert fast_rejects["rejected.bad_value"] >= 10  # the odd values were rejected, not summed
    assert fast_rejects["rejected.overflow"] == 2 * 6  # CORPUS[:4] has none
    assert len(fast[3]) > 0  # gauges carried into the empty interval


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_fast_path_equals_slow_path_with_client_precedence_and_sketches(line_cache: Any) -> None:
    config = {**BASE, "tag_precedence": "client", "timer_exact_samples": 2}
    payload = b"\n".join(f"db:{i % 17}.{i}|ms|#host:c{i % 3}".encode() for i in range(60))
    intervals = [[payload, payload], [payload]]
    fast, fast_rejects, _ = by_pipeline(config, intervals, line_cache)
    slow, slow_rejects = by_slow_path(config, intervals)
    assert fast == slow and fast_rejects == slow_rejects
    assert {s.tags for s in fast[0]} == {
        (("env", "prod"), ("host", f"c{i}")) for i in range(3)}


NAMES = st.sampled_from(["a", "b.c", "a,k=v", "{x", " a", "ü"])
VALUES = st.sampled_from(["1", "-2", "+3", "0.5", ".5", "5.", "1e3", "1E-2", "1_0", " 1", "nan",
                          "inf", "1e999", "", "x", "1:2", "1:x", "\udcff", "1e308", "-1e308",
                          "+1e308", "1e200"])
TYPES = st.sampled_from(["c", "g", "ms", "h", "d", "s", "q", ""])
EXTRAS = st.lists(st.sampled_from(["@0.5", "@1", "@0.1", "@0", "@x", "@5e-324", "#k:v,j", "#j,k:v",
                                   "#k:w", "T5", "c:abc", ""]), max_size=3)


@st.composite
def workloads(draw: Any) -> list[list[bytes]]:
    """Intervals of payloads whose lines reuse a few shapes (name, type, extras) with many
    values, so that a line served from the cache meets every kind of value."""
    shapes = draw(st.lists(st.tuples(NAMES, TYPES, EXTRAS), min_size=1, max_size=4))
    intervals = []
    for _ in range(draw(st.integers(1, 3))):
        payloads = []
        for _ in range(draw(st.integers(0, 6))):
            lines = []
            for _ in range(draw(st.integers(1, 6))):
                name, kind, extras = draw(st.sampled_from(shapes))
                text = "|".join([f"{name}:{draw(VALUES)}", kind, *extras])
                lines.append(text.encode("utf-8", "surrogateescape"))
            payloads.append(b"\n".join(lines))
        intervals.append(payloads)
    return intervals


@pytest.mark.parametrize("line_cache", LINE_CACHES)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_fast_path_equals_slow_path_on_generated_lines(line_cache: Any,
                                                       intervals: list[list[bytes]]) -> None:
    fast, fast_rejects, _ = by_pipeline(BASE, intervals, line_cache)
    slow, slow_rejects = by_slow_path(BASE, intervals)
    assert fast == slow
    assert fast_rejects == slow_rejects


def through(line_cache: Any, intervals: list[list[bytes]], batches: list[int] | None,
            absolute_gauges: bool = False) -> tuple[list[list[SeriesStats]], dict]:
    """Each interval's payloads through ``ingest`` one by one (``batches`` None), or through
    ``ingest_batch`` cut into batches of the sizes in ``batches`` (in turn): the snapshots and
    every self-counter."""
    built = build_config(BASE)
    stats = SelfStats()
    manager = MetricMgr(built)
    with pipelines_using(line_cache):
        pipeline = Pipeline(built, manager, stats)
    failures: list[bytes] = []
    sizes = iter(batches * 1000 if batches else [])
    snapshots = []
    for payloads in intervals:
        if batches is None:
            for payload in payloads:
                pipeline.ingest(payload, "statsd", absolute_gauges)
        else:
            at = 0
            while at < len(payloads):
                size = next(sizes)
                pipeline.ingest_batch(payloads[at:at + size], failures.append, absolute_gauges)
                at += size
        pipeline.publish_counts()
        snapshots.append(manager.finish(manager.swap(), 10.0))
    assert failures == []
    return snapshots, dict(stats.counters)


@pytest.mark.parametrize("line_cache", LINE_CACHES)
@pytest.mark.parametrize("absolute_gauges", [False, True], ids=["delta", "absolute"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intervals=workloads(), batches=st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_a_batch_of_datagrams_gives_what_each_ingested_alone_gives(
        line_cache: Any, absolute_gauges: bool, intervals: list[list[bytes]],
        batches: list[int]) -> None:
    intervals = [*intervals, CORPUS, CORPUS[::-1]]  # JSON, empty and odd starts among them
    alone = through(line_cache, intervals, None, absolute_gauges)
    batched = through(line_cache, intervals, batches, absolute_gauges)
    assert batched == alone
    assert batched[1]["received.datagrams"] == sum(map(len, intervals))


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_a_datagram_that_raises_in_a_batch_is_reported_and_the_rest_are_ingested(
        line_cache: Any, monkeypatch: Any) -> None:
    config = build_config({"forwarders": {}})
    stats = SelfStats()
    manager = MetricMgr(config)
    with pipelines_using(line_cache):
        pipeline = Pipeline(config, manager, stats)
    pipeline.ingest(b"a:1|c\nb:1|c\nc:1|c")  # every shape cached
    pipeline.publish_counts()
    stats.take()
    manager.swap()  # a new interval: each shape binds its cell again, through manager.cell
    bind = manager.cell

    def cell(key: Any) -> Any:
        if key[0] == "b":
            raise RuntimeError("a bug binding b")
        return bind(key)

    monkeypatch.setattr(manager, "cell", cell)
    failed: list[bytes] = []
    pipeline.ingest_batch([b"a:1|c", b"a:1|c\nb:1|c", b'{"bad json', b"c:2|c", b"a:1|c"],
                          failed.append)
    assert failed == [b"a:1|c\nb:1|c"]
    pipeline.publish_counts()
    counts = {s.name: s.stats["count"] for s in manager.finish(manager.swap(), 1.0)}
    assert counts == {"a": 3, "c": 2}  # a's line before the failure in its datagram counts
    taken = stats.take()
    assert taken["received.datagrams"] == 5 and taken["rejected.bad_json"] == 1


def test_counts_received_decoded_and_aggregated_at_swap() -> None:
    config = build_config({"forwarders": {}, "max_series": 2})
    stats = SelfStats()
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, stats)
    pipeline.ingest(b"a:1|c\nb:2|g\n")
    pipeline.ingest(b"a:1|c\nnonsense\n\nc:1|c")  # c is past max_series
    pipeline.ingest(b'{"metric_name":"a","metric_type":"counter","value":1}')
    assert "received.datagrams" not in stats.counters  # kept locally until published
    pipeline.publish_counts()
    manager.finish(manager.swap(), 10.0)  # the gauge b is carried on: it holds one of the two
    assert stats.take() == {
        "received.datagrams": 3, "received.lines": 6, "decoded.samples": 5,
        "aggregated.samples": 4, "rejected.bad_line": 1, "rejected.too_many_series": 1,
    }
    pipeline.ingest(b"c:1|c\nd:5|c")  # the shapes are cached now; a and b have not come back
    pipeline.ingest(b"e:1|c\na:1|c\nb:+1|g")  # past max_series even through the cache; b is held
    pipeline.publish_counts()
    manager.swap()
    assert stats.take() == {
        "received.datagrams": 2, "received.lines": 5, "decoded.samples": 5,
        "aggregated.samples": 2, "rejected.too_many_series": 3,  # d, e, a; c and b count
    }


def test_bad_lines_cost_only_themselves() -> None:
    config = build_config({"forwarders": {}})
    stats = SelfStats()
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, stats)
    for _ in range(2):
        pipeline.ingest(b"ok:1|c\nok:\xff|c\nok:2|c\n:3|c\nok:nan|c\nok:3|c|@7\nok:4|c")
    series = manager.finish(manager.swap(), 10)
    assert [(s.name, s.stats["count"]) for s in series] == [("ok", 14.0)]
    assert sum(v for k, v in stats.counters.items() if k.startswith("rejected.")) == 8


def test_max_series_applies_to_cached_lines_in_a_new_interval() -> None:
    config = build_config({"forwarders": {}, "max_series": 1})
    stats = SelfStats()
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, stats)
    pipeline.ingest(b"a:1|c\nb:1|c")
    manager.swap()
    pipeline.ingest(b"b:1|c\na:1|c\na:1|c")  # both cached; b takes the only slot now
    series = manager.finish(manager.swap(), 10)
    assert [(s.name, s.stats["count"]) for s in series] == [("b", 1.0)]
    assert stats.counters["rejected.too_many_series"] == 3


def test_the_line_cache_lets_go_of_a_burst_of_names_once_they_are_gone() -> None:
    config = build_config({"forwarders": {}, "idle_expiry_intervals": 1})
    stats = SelfStats()
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, stats)
    burst = b"\n".join(b"burst.%d:1|c" % i for i in range(6000))
    pipeline.ingest(burst)
    pipeline.ingest(burst)  # now served from the cache
    assert pipeline.cached_shapes == 6000
    manager.finish(manager.swap(), 10.0)
    pipeline.ingest(b"steady:1|c")
    manager.finish(manager.swap(), 10.0)  # a table under half the last one's: the burst is over
    pipeline.ingest(b"steady:1|c\nsteady:2|c")
    assert pipeline.cached_shapes == 1  # emptied, then refilled by the traffic
    series = manager.finish(manager.swap(), 10.0)
    assert [(s.name, s.stats["count"]) for s in series] == [("steady", 3.0)]


def test_cached_timer_lines_fold_into_a_sketch_past_the_limit() -> None:
    config = build_config({"forwarders": {}, "timer_exact_samples": 50})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    for start in range(0, 1000, 20):
        pipeline.ingest(b"\n".join(b"db:%d|ms" % v for v in range(start + 1, start + 21)))
    assert len(manager._table.series[("db", "timer", ())].values) <= 50
    stats = manager.finish(manager.swap(), 10)[0].stats
    assert (stats["count"], stats["sum"], stats["min"], stats["max"]) == (1000, 500500, 1, 1000)
    assert abs(stats["p90"] - 900) <= 9


def test_a_line_the_cache_refuses_keeps_its_place_among_the_lines_it_takes() -> None:
    config = build_config({"forwarders": {}})
    stats = SelfStats()
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, stats)
    pipeline.ingest(b"load:1|g|#a:1,b:2\nn:1|c")  # both shapes cached now
    manager.swap()
    # The first line is a new shape of the same series (decoded), the second a cached one: the
    # delta must apply after the absolute value, as the lines came.
    pipeline.ingest(b"load:5|g|#b:2,a:1\nload:+1|g|#a:1,b:2")
    # The same refused line twice, between cached ones: each line counted once, in order.
    pipeline.ingest(b"n:1|c\nbad\nn:1|c\nbad\nn:2|c\nn:nan|c\nn:4|c")
    series = {s.name: s.stats for s in manager.finish(manager.swap(), 10)}
    assert series == {"load": {"value": 6.0}, "n": {"count": 8.0, "rate": 0.8}}
    assert rejects(stats) == {"rejected.bad_line": 2, "rejected.bad_value": 1}


class RecordingRelay(RelayForwarder):
    """A real relay forwarder (the base class's thread) that keeps each batch it gets."""

    def __init__(self) -> None:
        super().__init__("recorder", {"queue_size": 100}, ForwarderContext())
        self.batches: list[list[bytes]] = []
        self.lock = threading.Lock()

    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        with self.lock:
            self.batches.append(lines)
        return True

    def send_round(self, now: float) -> None:
        pass

    def pending(self) -> int:
        return 0

    def discard(self) -> int:
        return 0


def run_relay(mode: str) -> tuple[list[list[bytes]], list]:
    config = build_config({"forwarders": {}, "mode": mode})
    manager = MetricMgr(config)
    relay = RecordingRelay()
    relay.start()
    pipeline = Pipeline(config, manager, SelfStats(), relays=[relay])
    try:
        pipeline.ingest(b"a:1|c\nb:2|g\n")
        pipeline.ingest(b'{"metric_name":"j","metric_type":"counter","value":1}')
    finally:
        assert relay.close(5.0) == 0
    return relay.batches, manager.finish(manager.swap(), 10)


def test_aggregate_mode_relays_raw_lines_once_per_payload_and_aggregates() -> None:
    batches, series = run_relay("aggregate")
    # JSON input reaches relays as the statsd line the receive path made of it
    assert batches == [[b"a:1|c", b"b:2|g"], [b"j:1|c"]]
    assert [s.name for s in series] == ["a", "b", "j"]


def test_relay_mode_only_relays() -> None:
    batches, series = run_relay("relay")
    assert len(batches) == 2 and batches[0] == [b"a:1|c", b"b:2|g"]
    assert not series


def test_a_pipeline_rebuilt_on_reload_keeps_the_counts_and_frees_the_old_one() -> None:
    config = build_config({"forwarders": {}})
    stats = SelfStats()
    manager = MetricMgr(config)
    old = Pipeline(config, manager, stats)
    old.ingest(b"a:1|c\na:2|c")
    old_ref = weakref.ref(old)
    old.publish_counts()  # what the daemon does on SIGHUP, under the ingest lock
    new = Pipeline(config, manager, stats)
    del old
    gc.collect()
    assert old_ref() is None  # its line cache does not pile up, reload after reload
    new.ingest(b"a:1|c")
    new.publish_counts()
    manager.swap()
    assert stats.take() == {"received.datagrams": 2, "received.lines": 3,
                            "decoded.samples": 3, "aggregated.samples": 3}


def test_tag_order_and_tag_syntax_never_split_a_series() -> None:
    config = build_config({"forwarders": {}})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    for _ in range(2):  # the second time from the cache
        pipeline.ingest(b"m:1|c|#b:2,a:1\nm:1|c|#a:1,b:2\nm,b=2,a=1:1|c\nm,a=1:1|c|#b:2")
    series = manager.finish(manager.swap(), 10)
    assert [(s.name, s.tags, s.stats["count"]) for s in series] == [
        ("m", (("a", "1"), ("b", "2")), 8.0)]


def test_line_cache_stays_bounded_and_results_stay_right(monkeypatch: Any) -> None:
    monkeypatch.setattr(aggregation_module, "CACHE_ENTRIES", 50)
    monkeypatch.setattr(aggregation_module, "CACHE_BYTES", 20_000)
    config = build_config({"forwarders": {}})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    long_tags = b"|#" + b",".join(b"k%d:%s" % (i, b"v" * 40) for i in range(20))
    most = 0
    for _ in range(2):
        for i in range(300):
            pipeline.ingest(b"n%d:1|c%s\nt%d:2|ms" % (i, long_tags if i % 3 == 0 else b"", i))
            most = max(most, pipeline.cached_shapes)
            assert pipeline._cache.bytes < 20_000 + 2_000
    assert 0 < most <= 50
    series = manager.finish(manager.swap(), 10)
    assert len(series) == 600
    assert {s.stats["count"] for s in series} == {2.0}


@pytest.mark.integration
def test_the_daemon_counts_lines_received_before_a_reload_in_its_self_metrics(
        start_daemon: Any) -> None:
    # The daemon publishes the pipeline's counts before each swap and, on SIGHUP, those of the
    # pipeline it replaces: nothing received before a reload goes uncounted.
    daemon = start_daemon({"flush_interval": 3600})
    daemon.send_udp(b"a:1|c\nb:2|g", b"c:3|ms")
    time.sleep(0.3)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded")
    daemon.send_udp(b"a:1|c")
    time.sleep(0.3)
    assert daemon.stop() == 0
    counted = {r["name"]: r["stats"]["count"] for r in daemon.records()
               if r["name"] in ("pystatsd.received.lines", "pystatsd.aggregated.samples")}
    assert counted == {"pystatsd.received.lines": 4, "pystatsd.aggregated.samples": 4}
