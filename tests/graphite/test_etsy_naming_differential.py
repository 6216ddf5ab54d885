"""Etsy statsd itself against pystatsd: the same timer lines to Etsy statsd (build/npm, its
graphite backend) and to the daemon (the ``graphite`` forwarder, ``naming: etsy``), each
writing to a carbon stand-in; the ``stats.timers.*`` paths and values must be the same, so an
Etsy user's dashboards (``mean_90``, ``upper_99_9``, ``sum_squares``...) keep their data."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import FakeCarbon, wait_for

from tests.relay.conftest import EtsyStatsd

pytestmark = pytest.mark.integration

THRESHOLDS = [10, 50, 90, 95, 99.9]
"""Etsy's ``percentThreshold`` and our ``percentiles``: 10 takes no sample of a 3-sample timer
(Etsy then writes nothing for it), 99.9 is named ``_99_9``."""
BINS = {"diff.many": [10, 20.5, 50, "inf"], "diff.ten": [3, 7]}
"""Etsy's ``histogram`` (a bin counts the samples below its bound: 3 and 7 are samples of
``ten``, and those past 7 are in no bin) and our ``histogram_buckets`` with the same bounds."""


def timer_lines() -> dict[str, list[bytes]]:
    """Each timer's lines, by name: a lone sample, ties, zeros, a round-half case, and a
    few dozen values (three decimals, so both parse the same double)."""
    rng = random.Random(13)
    values = {
        "single": [42.5],
        "three": [3.0, 1.0, 2.0],
        "ties": [5.0] * 6 + [1.0, 9.0],
        "zeros": [0.0, 2.0, 0.0, 7.25, 0.125, 0.0],  # Etsy refuses negative timings
        "ten": [float(v) for v in range(10, 0, -1)],  # 95% of 10 = 9.5: rounds up to 10
        "many": [round(rng.lognormvariate(3, 1), 3) for _ in range(37)],
    }
    lines = {name: [b"diff.%s:%r|ms" % (name.encode(), value) for value in series]
             for name, series in values.items()}
    lines["sampled"] = [b"diff.sampled:%r|ms|@0.5" % v for v in (4.0, 8.5, 1.25, 6.0, 2.0)]
    return lines


def etsy_to_graphite(workdir: Path, graphite_port: int) -> EtsyStatsd:
    """Etsy statsd on loopback, its graphite backend writing to ``graphite_port`` each
    second."""
    histogram = ", ".join(f"{{metric: '{name}', bins: {bins}}}" for name, bins in BINS.items())
    return EtsyStatsd(workdir, f"flushInterval: 1000, backends: ['./backends/graphite'],"
                               f" graphiteHost: '127.0.0.1', graphitePort: {graphite_port},"
                               f" percentThreshold: {THRESHOLDS}, histogram: [{histogram}]")


@pytest.fixture
def carbons() -> Iterator[tuple[FakeCarbon, FakeCarbon]]:
    etsy, ours = FakeCarbon(), FakeCarbon()
    yield etsy, ours
    etsy.close()
    ours.close()


def timer_paths(carbon: FakeCarbon) -> dict[str, float]:
    return {path: value for path, value, _ in carbon.snapshot()
            if path.startswith("stats.timers.diff.")}


def one_flush(carbon: FakeCarbon, names: int) -> dict[str, float]:
    """The timer paths of the first flush that has them (idle timers are not written again:
    Etsy's deleteIdleStats, and pystatsd reports only intervals with samples)."""
    wait_for(lambda: len({p.split(".")[3] for p in timer_paths(carbon)}) == names, 20,
             "a flush with every timer")
    return timer_paths(carbon)


def test_etsy_timer_paths_and_values_match_etsy_statsd(start_daemon: Any, tmp_path: Path,
                                                       carbons: tuple[FakeCarbon, FakeCarbon],
                                                       ) -> None:
    etsy_carbon, our_carbon = carbons
    lines = timer_lines()
    # One datagram to each: a flush cannot fall between its lines.
    payload = b"\n".join(line for series in lines.values() for line in series)
    assert len(payload) < 8192
    etsy = etsy_to_graphite(tmp_path, etsy_carbon.port)
    try:
        daemon = start_daemon({
            "flush_interval": 1, "percentiles": THRESHOLDS,
            "histogram_buckets": [{"match": name, "buckets": [float(b) for b in bins]}
                                  for name, bins in BINS.items()],
            "forwarders": {
                "carbon": {"type": "graphite", "port": our_carbon.port, "naming": "etsy"},
                "console": {}}})
        daemon.send_udp(payload)
        daemon.send_udp(payload, port=etsy.port)
        theirs = one_flush(etsy_carbon, len(lines))
        ours = one_flush(our_carbon, len(lines))
    finally:
        etsy.close()

    assert "stats.timers.diff.many.mean_90" in theirs
    assert "stats.timers.diff.ten.upper_95" in theirs and "stats.timers.diff.three.sum_10" \
        not in theirs
    assert "stats.timers.diff.many.upper_99_9" in theirs
    assert "stats.timers.diff.single.sum_squares_10" in theirs
    assert theirs["stats.timers.diff.ten.histogram.bin_3"] == 2.0
    assert "stats.timers.diff.many.histogram.bin_inf" in theirs
    # our own cumulative buckets beside them, which Etsy does not write
    assert ours.pop("stats.timers.diff.ten.le_3") == 3.0
    for path in [p for p in ours if ".le_" in p]:
        del ours[path]
    assert sorted(ours) == sorted(theirs)
    # With a sample rate Etsy's sum and sum_squares ignore it (only count weighs 1 / rate);
    # ours weigh each sample by 1 / rate like count, so that sum / count is the mean.
    weighted = {"stats.timers.diff.sampled.sum", "stats.timers.diff.sampled.sum_squares"}
    for path in weighted:
        assert ours[path] == pytest.approx(2 * theirs[path], rel=1e-12), path
    mismatched = {path: (ours[path], theirs[path]) for path in theirs if path not in weighted
                  and not math.isclose(ours[path], theirs[path], rel_tol=1e-12, abs_tol=1e-12)}
    assert not mismatched

    # The forwarder beside it that did not ask sees the usual statistics, no more.
    records = [r for r in daemon.records() if r.get("name") == "diff.many"]
    assert records, daemon.records()[:3]
    assert set(records[0]["stats"]) == {"count", "sum", "min", "max", "mean", "median",
                                        "stddev", "p10", "p50", "p90", "p95", "p99_9",
                                        "le_10", "le_20_5", "le_50", "le_inf"}
