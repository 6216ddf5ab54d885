"""Issue 11 item 4: ``max_series`` bounds every series the daemon holds, carried gauges too, even
when a burst of new names straddles flushes; the drops are counted, shown and logged."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import pytest
from fault_helpers import flushed, kernel_udp_drops

pytestmark = pytest.mark.integration

LIMIT = 40
SENT = 120


def test_a_burst_of_new_names_straddling_flushes_never_passes_max_series(
        start_fault_daemon: Any) -> None:
    daemon = start_fault_daemon({
        "flush_interval": 1, "max_series": LIMIT, "idle_expiry_intervals": 1000,
        "forwarders": {"console": {}}})
    # New gauge names, one datagram each, over ~2.4 s: at least two flushes fall inside the
    # burst. Each gauge accepted is carried on at every flush after, so whichever interval a
    # name lands in, exactly LIMIT are ever held.
    for i in range(SENT):
        daemon.send_udp(f"burst.g{i:03d}:{i}|g".encode())
        time.sleep(0.02)
    time.sleep(0.3)
    assert kernel_udp_drops(daemon.proc.pid, daemon.port) == 0
    daemon.wait_for_log("of max_series")
    daemon.wait_for_log("rejected (too_many_series)")
    assert daemon.stop() == 0

    records = daemon.records()
    by_flush: dict[float, set[str]] = defaultdict(set)
    levels: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record["name"].startswith("burst."):
            by_flush[record["interval_start"]].add(record["name"])
        elif record["name"].startswith("pystatsd.series."):
            levels[record["name"]].append(record["stats"]["value"])
    assert len(by_flush) >= 3  # the burst straddled at least two flushes
    assert max(len(names) for names in by_flush.values()) == LIMIT
    accepted = set().union(*by_flush.values())
    assert len(accepted) == LIMIT
    assert flushed(records, "pystatsd.rejected.too_many_series") == SENT - len(accepted)
    assert flushed(records, "pystatsd.aggregated.samples") == len(accepted)
    assert levels["pystatsd.series.limit"][-1] == LIMIT
    assert levels["pystatsd.series.held"][-1] == LIMIT
    assert levels["pystatsd.series.carried"][-1] == LIMIT
    assert max(levels["pystatsd.series.held"]) == LIMIT
    # The fill warning once (rate-limited to a minute), at the documented 80%.
    fill = [line for line in daemon.stderr if "of max_series" in line]
    assert len(fill) == 1 and f"{LIMIT * 8 // 10} series held, 80%" in fill[0]
    assert "Traceback" not in "".join(daemon.stderr)
