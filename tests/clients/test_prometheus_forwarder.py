"""The ``prometheus`` forwarder: /metrics parsed by prometheus-client's own parser holds the
aggregates (counters cumulative as ``_total``, gauges, timers as summaries, tags as labels), a
stale series disappears after its expiry, and the forwarder passes the contract suite."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forwarders import ForwarderContext, load_forwarder_class
from forwarders.contract import AggregateContract
from pystatsd.config import build_config
from pystatsd.snapshot import SeriesStats, Snapshot


def build(debug_mode: bool = False, queue_size: int = 64, **keys: Any) -> Any:
    config = build_config({"forwarders": {"prom": {"type": "prometheus", "listen_port": 0,
                                                   "queue_size": queue_size, **keys}}})
    return load_forwarder_class("prometheus")("prom", config["forwarders"]["prom"],
                                              ForwarderContext(debug_mode=debug_mode))


def scrape(forwarder: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{forwarder.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def flush(start: float, *series: SeriesStats) -> Snapshot:
    return Snapshot(start, 10.0, "h", tuple(series))


def test_metrics_hold_the_aggregates() -> None:
    forwarder = build()
    forwarder.start()
    try:
        tags = (("env", "prod"), ("route.name", "/login"))
        timer = {"count": 3.0, "sum": 60.0, "min": 10.0, "max": 30.0, "mean": 20.0,
                 "median": 20.0, "stddev": 8.2, "p50": 20.0, "p99_9": 30.0}
        forwarder.submit(flush(0.0, SeriesStats("api.hits", "counter", tags,
                                                {"count": 4.0, "rate": 0.4}),
                               SeriesStats("cpu", "gauge", (), {"value": -5.0}),
                               SeriesStats("db.query", "timer", (), timer),
                               SeriesStats("users", "set", (), {"count": 2.0})))
        forwarder.submit(flush(10.0, SeriesStats("api.hits", "counter", tags,
                                                 {"count": 3.0, "rate": 0.3}),
                               SeriesStats("db.query", "timer", (), {**timer, "p50": 12.0})))
        wait_for(lambda: forwarder.stats()["sent"] == 6)
        got = scrape(forwarder)
        labels = (("env", "prod"), ("route_name", "/login"))
        assert got[("api_hits_total", labels)] == 7  # cumulative over both flushes
        assert got[("cpu", ())] == -5
        assert got[("db_query_count", ())] == 6
        assert got[("db_query_sum", ())] == 120
        assert got[("db_query", (("quantile", "0.5"),))] == 12  # the last interval's
        assert got[("db_query", (("quantile", "0.999"),))] == 30
        assert got[("users_unique", ())] == 2
    finally:
        assert forwarder.close(5) == 0


@pytest.mark.slow  # waits out a timeout by design: out of the fast loop
def test_a_stale_series_disappears_after_its_expiry() -> None:
    forwarder = build(expiry_seconds=0.5)
    forwarder.start()
    try:
        forwarder.submit(flush(0.0, SeriesStats("old", "gauge", (), {"value": 1.0}),
                               SeriesStats("fresh", "gauge", (), {"value": 2.0})))
        wait_for(lambda: ("old", ()) in scrape(forwarder))
        time.sleep(0.7)
        forwarder.submit(flush(10.0, SeriesStats("fresh", "gauge", (), {"value": 3.0})))
        wait_for(lambda: scrape(forwarder).get(("fresh", ())) == 3)
        assert ("old", ()) not in scrape(forwarder)
    finally:
        forwarder.close(5)


class PrometheusHarness:
    """Delivered = series updates the endpoint shows: the contract's snapshots repeat the same
    series with a counter of 2 and a timer of count 2 in every batch of three, so each
    scraped counter total and summary count says how many batches reached it."""

    def __init__(self) -> None:
        self.forwarder: Any = None

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        self.forwarder = build(debug_mode=debug_mode, queue_size=queue_size)
        return self.forwarder

    def delivered(self) -> int:
        if self.forwarder is None or getattr(self.forwarder, "_server", None) is None:
            return getattr(self, "_last", 0)
        got = scrape(self.forwarder)
        batches = got.get(("contract_m0_total", (("env", "test"),)), 0.0) / 2
        self._last = int(batches * 3)
        return self._last


class TestPrometheusContract(AggregateContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> PrometheusHarness:
        return PrometheusHarness()


def test_histogram_buckets_reach_the_stats_and_the_endpoint() -> None:
    from pystatsd.aggregation import MetricMgr
    from pystatsd.ingest import Pipeline
    from pystatsd.selfstats import SelfStats

    config = build_config({"forwarders": {}, "timer_exact_samples": 4, "histogram_buckets": [
        {"match": "api.*", "buckets": [10, 0.5, 100]}, {"match": "*", "buckets": [1]}]})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    pipeline.ingest(b"api.lat:0.2|ms\napi.lat:5|ms\napi.lat:50|ms|@0.5\napi.lat:500|ms\n"
                    b"db:0.5|h\ndb:2|h\nother.x.y:1|ms")
    pipeline.ingest(b"\n".join(b"big:%d|ms" % v for v in range(1, 101)))  # past the sketch
    got = {s.name: s.stats for s in manager.finish(manager.swap(), 10.0)}
    api = got["api.lat"]
    assert (api["le_0_5"], api["le_10"], api["le_100"], api["le_inf"]) == (1, 2, 4, 5)
    assert (got["db"]["le_1"], got["db"]["le_inf"]) == (1, 2)
    assert "le_1" not in got["other.x.y"]  # '*' is one component: no entry matches
    assert got["big"]["le_inf"] == 100 and abs(got["big"]["le_1"] - 1) <= 1  # sketch rank
    sketch = build_config({"forwarders": {}, "timer_exact_samples": 4,
                           "histogram_buckets": [{"match": "big", "buckets": [50]}]})
    manager = MetricMgr(sketch)
    Pipeline(sketch, manager, SelfStats()).ingest(
        b"\n".join(b"big:%d|ms" % v for v in range(1, 101)))
    assert abs(manager.finish(manager.swap(), 10.0)[0].stats["le_50"] - 50) <= 2

    forwarder = build()
    forwarder.start()
    try:
        lat = SeriesStats("api.lat", "timer", (), api)
        forwarder.submit(flush(0.0, lat))
        forwarder.submit(flush(10.0, lat))
        wait_for(lambda: forwarder.stats()["sent"] == 2)
        scraped = scrape(forwarder)
        assert scraped[("api_lat_bucket", (("le", "0.5"),))] == 2
        assert scraped[("api_lat_bucket", (("le", "100.0"),))] == 8
        assert scraped[("api_lat_bucket", (("le", "+Inf"),))] == 10
        assert scraped[("api_lat_count", ())] == 10
    finally:
        forwarder.close(5)
