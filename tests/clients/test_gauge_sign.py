"""``gauge_sign``: one line, two meanings, decided per listener; the fast path (which caches
by line shape) replays the same meaning as the decoder, on both kinds of listener at once."""

from __future__ import annotations

from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.decoders import decode_payload, parse_statsd_line
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats

CONFIG = {"forwarders": {}}


def gauges(pipeline_or_payloads: list[tuple[bytes, bool]], cached: bool) -> dict[str, float]:
    """Feed (payload, absolute) pairs through the pipeline (cached) or the decoder alone;
    return the flushed gauge values by name."""
    config = build_config(CONFIG)
    stats = SelfStats()
    manager = MetricMgr(config, stats)
    pipeline = Pipeline(config, manager, stats)
    for payload, absolute in pipeline_or_payloads:
        if cached:
            pipeline.ingest(payload, absolute_gauges=absolute)
        else:
            for sample in decode_payload(payload, stats, absolute):
                manager.add(sample)
    return {s.name: s.stats["value"] for s in manager.finish(manager.swap(), 10.0)}


def test_the_decoder_reads_a_signed_gauge_per_the_listeners_meaning() -> None:
    etsy = parse_statsd_line(b"temp:-5|g")[0]
    dogstatsd = parse_statsd_line(b"temp:-5|g", absolute_gauges=True)[0]
    assert (etsy.value, etsy.delta) == (-5.0, True)
    assert (dogstatsd.value, dogstatsd.delta) == (-5.0, False)
    plus = parse_statsd_line(b"temp:+5|g", absolute_gauges=True)[0]
    assert (plus.value, plus.delta) == (5.0, False)


def test_fast_path_replays_each_listeners_meaning_for_the_same_line_shapes() -> None:
    # The same shapes arrive from both kinds of listener, often enough to be cached, and in
    # a payload of several lines (the cache's loop) and alone.
    traffic = []
    for _ in range(3):
        traffic += [(b"a:3|g\na:-5|g", False), (b"b:3|g\nb:-5|g", True),
                    (b"c:10|g", False), (b"c:+2|g", False),
                    (b"d:10|g", True), (b"d:+2|g", True)]
    expected = {"a": -2.0, "b": -5.0, "c": 12.0, "d": 2.0}
    assert gauges(traffic, cached=False) == expected
    assert gauges(traffic, cached=True) == expected
    # One line shape, cached from one listener, is not replayed for the other.
    mixed = [(b"e:4|g", False), (b"e:-1|g", False), (b"e:-1|g", True), (b"e:-1|g", False)]
    assert gauges(mixed, cached=True) == gauges(mixed, cached=False) == {"e": -2.0}
