"""A receive worker's per-payload bookkeeping, without processes: the shared page holds what a
death would lose at every moment, and the gauges' arrival stamps come from the clock the
workers share, taken by the line cache (in C for the compiled one), not stamped per payload."""

from __future__ import annotations

import mmap
import time
from typing import Any

import pytest

from pystatsd.config import build_config
from pystatsd.workers import gauge_order
from pystatsd.workers.worker import (
    HELD_PAYLOADS,
    HELD_SERIES,
    SWAPPED_PAYLOADS,
    SWAPPED_SERIES,
    Worker,
)
from tests.line_caches import LINE_CACHES, pipelines_using


def built_worker() -> Worker:
    worker = Worker(0, None, mmap.mmap(-1, mmap.PAGESIZE))  # type: ignore[arg-type]
    worker.build(build_config({"forwarders": {}}))
    return worker


def page(worker: Worker) -> tuple[int, int, int, int]:
    held = worker.held
    return (held[HELD_PAYLOADS], held[HELD_SERIES], held[SWAPPED_PAYLOADS],
            held[SWAPPED_SERIES])


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_the_page_counts_every_payload_and_series_a_death_would_lose(line_cache: Any) -> None:
    with pipelines_using(line_cache):
        worker = built_worker()
    worker.deliver(b"a:1|c\nb:2|g")  # the slow path: both shapes new
    assert page(worker) == (1, 2, 0, 0)
    worker.deliver(b"a:1|c\nb:+1|g")  # the line cache's (a new shape for the delta)
    worker.deliver(b'{"metric_name": "j", "metric_type": "counter", "value": 1}')  # JSON
    worker.deliver(b"a:1|c")
    assert page(worker) == (4, 3, 0, 0)
    worker.flush()  # swapped and answered: the parent clears the second pair on the answer
    assert page(worker) == (0, 0, 4, 3)
    worker.deliver(b"a:1|c")  # a new interval: the count starts again
    assert page(worker)[:2] == (1, 1)


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_a_batch_of_the_native_receive_is_counted_whole_and_the_count_goes_on(
        line_cache: Any) -> None:
    with pipelines_using(line_cache):
        worker = built_worker()
    failed: list[bytes] = []
    worker.deliver(b"a:1|c")
    # The cache's, the slow path's (a new shape), JSON and a bad line in one batch.
    worker.deliver_batch([b"a:1|c", b"b:2|g\na:3|c", b'{"metric_name": "j", '
                          b'"metric_type": "counter", "value": 1}', b"not a metric"],
                         failed.append)
    assert page(worker) == (5, 3, 0, 0)
    assert failed == []  # a bad line is the pipeline's to count, not a failed delivery
    worker.deliver(b"c:1|c")  # one at a time again: the count continues after the batch
    assert page(worker)[:2] == (6, 4)
    table_series = worker.manager.current_series()
    assert table_series[("a", "counter", ())][0] == 5.0  # every line of the batch applied
    worker.flush()
    assert page(worker) == (0, 0, 6, 4)
    worker.deliver_batch([b"a:1|c", b"a:1|c"], failed.append)  # a new interval
    assert page(worker)[:2] == (2, 1)


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_a_workers_gauges_take_the_clocks_millisecond_on_every_path(line_cache: Any) -> None:
    with pipelines_using(line_cache):
        worker = built_worker()
    gauge_order._now[0] = 0  # nobody stamps: the cache and the slow path read the clock
    before = time.monotonic_ns() // 1_000_000
    worker.deliver(b"g:5|g")  # slow path: decoded, then remembered
    worker.deliver(b"g:+2|g\ng:-1|g")  # a new shape (the sign): slow path, then the cache
    gauge_order._now[0] = 0  # (the slow path's own stamp above: stale again)
    worker.deliver(b"g:7|g\ng:+4|g")  # the cache's timed gauge arm alone
    worker.deliver(b'{"metric_name": "j", "metric_type": "gauge", "value": 1}')
    after = time.monotonic_ns() // 1_000_000
    cells = worker.manager.current_series()
    at, moved_at, moved = cells[("g", "gauge", ())].record  # 7 set at `at`, then +4
    assert before <= at <= moved_at <= after
    assert moved == 4.0
    json_record = cells[("j", "gauge", ())].record
    assert before <= json_record[0] <= after
    assert before <= gauge_order._now[0] <= after
