"""Round trips through a real carbon-cache (Debian's graphite-carbon): Etsy-named aggregates
from the ``graphite`` forwarder, over plaintext and over pickle, read back value by value from
carbon's whisper files with whisper-fetch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import CarbonCache, needs_carbon, wait_for

from forwarders import ForwarderContext, SeriesStats, Snapshot, load_forwarder_class
from pystatsd.config import build_config

pytestmark = [pytest.mark.integration, needs_carbon]


@pytest.fixture(scope="module")
def carbon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with CarbonCache(tmp_path_factory.mktemp("carbon")) as server:
        yield server


def forwarder_for(carbon: CarbonCache, tmp_path: Path, **keys: Any) -> Any:
    section = build_config({"forwarders": {"carbon": {
        "type": "graphite", "port": carbon.line_port, "pickle_port": carbon.pickle_port,
        **keys}}})["forwarders"]["carbon"]
    return load_forwarder_class("graphite")("carbon", section,
                                            ForwarderContext(state_dir=tmp_path))


@pytest.mark.parametrize("protocol", ["plaintext", "pickle"])
def test_etsy_named_flushes_land_in_whisper_value_by_value(carbon: CarbonCache, tmp_path: Path,
                                                           protocol: str) -> None:
    # whisper keeps 1 day here: the intervals must be recent, aligned to its 10 s slots
    now = int(time.time()) // 10 * 10
    starts = [now - 30, now - 20, now - 10]
    root = f"rt_{protocol}"
    forwarder = forwarder_for(carbon, tmp_path, protocol=protocol, naming="etsy",
                              etsy={"legacy_namespace": False, "global_prefix": root})
    forwarder.start()
    expected: dict[str, dict[int, float]] = {}
    try:
        for i, start in enumerate(starts):
            series = (
                SeriesStats("api.hits", "counter", (), {"count": 10.0 * (i + 1),
                                                        "rate": float(i + 1)}),
                SeriesStats("api.time", "timer", (), {"count": 4.0, "sum": 10.5 + i,
                                                      "min": 0.25, "max": 4.0 + i, "mean": 2.625,
                                                      "median": 2.5, "stddev": 1.25,
                                                      "p90": 3.75 + i}),
                SeriesStats("queue.depth", "gauge", (), {"value": -2.5 * i}),
                SeriesStats("users", "set", (), {"count": float(7 + i)}),
            )
            assert forwarder.submit(Snapshot(float(start), 10.0, "h", series))
            for path, value, stamp in forwarder.datapoints(Snapshot(float(start), 10.0, "h",
                                                                    series)):
                expected.setdefault(path, {})[stamp] = value
        wait_for(lambda: forwarder.stats()["sent"] == 12, what="three flushes sent")
    finally:
        assert forwarder.close(10) == 0
    assert f"{root}.counters.api.hits.rate" in expected
    assert f"{root}.timers.api.time.upper_90" in expected
    assert f"{root}.gauges.queue.depth" in expected and f"{root}.sets.users.count" in expected

    def landed() -> bool:
        return carbon.values_of(list(expected), starts[0]) == expected

    try:
        wait_for(landed, 30, "every datapoint in whisper")
    except AssertionError:
        stored = carbon.values_of(list(expected), starts[0])
        missing = {p: (stored[p], v) for p, v in expected.items() if stored[p] != v}
        raise AssertionError(f"not in whisper as sent: {missing}\n{carbon.log()[-2000:]}") \
            from None
    assert {p for p in carbon.paths() if p.startswith(root + ".")} == set(expected)


def test_a_tagged_series_lands_in_carbons_tagged_tree(carbon: CarbonCache,
                                                      tmp_path: Path) -> None:
    now = int(time.time()) // 10 * 10
    forwarder = forwarder_for(carbon, tmp_path)
    forwarder.start()
    try:
        assert forwarder.submit(Snapshot(float(now), 10.0, "h", (
            SeriesStats("tagged.depth", "gauge", (("env", "prod"), ("zone", "eu west")),
                        {"value": 5.5}),)))
        wait_for(lambda: forwarder.stats()["sent"] == 1, what="the flush sent")
    finally:
        forwarder.close(10)
    # sanitized ("eu west" -> "eu_west") and found where carbon's own encoder puts it
    wait_for(lambda: carbon.values("tagged.depth.value;env=prod;zone=eu_west", now)
             == {now: 5.5}, 30, "the tagged datapoint in whisper")


def test_etsys_timer_stats_from_the_daemon_land_in_whisper(carbon: CarbonCache,
                                                           start_daemon: Any) -> None:
    root = "rt_daemon"
    since = int(time.time()) // 10 * 10 - 10
    daemon = start_daemon({
        "flush_interval": 1, "percentiles": [90, 99.9],
        "histogram_buckets": [{"match": "db.query", "buckets": [5, 10]}],
        "forwarders": {"carbon": {"type": "graphite", "port": carbon.line_port, "naming": "etsy",
                                  "etsy": {"legacy_namespace": False, "global_prefix": root}}}})
    # 1..10 ms: the lowest 90% are 1..9 (round(9.0)), all ten for 99.9% (round(9.99))
    daemon.send_udp(b"\n".join(b"db.query:%d|ms" % v for v in range(1, 11)))
    timer = f"{root}.timers.db.query."
    expected = {"mean_90": 5.0, "upper_90": 9.0, "sum_90": 45.0, "count_90": 9.0,
                "sum_squares_90": 285.0, "upper_99_9": 10.0, "count_99_9": 10.0,
                "sum_squares": 385.0, "median": 5.5,
                "histogram.bin_5": 4.0, "histogram.bin_10": 5.0}  # below 5; 5 up to below 10

    def landed() -> dict[str, list[float]]:
        return {stat: list(carbon.values(timer + stat, since).values()) for stat in expected}

    try:
        wait_for(lambda: all(landed().values()), 30, "the new timer paths in whisper")
    except AssertionError:
        raise AssertionError(f"{landed()}\n{carbon.log()[-2000:]}") from None
    assert landed() == {stat: [value] for stat, value in expected.items()}
