"""SelfStats: the daemon's own counters keep every increment whichever threads write them (the
UDP receive thread, the TCP listener's asyncio thread, the main thread's flush)."""

from __future__ import annotations

import threading
import time
from collections import Counter

from pystatsd.selfstats import SelfStats


class PreemptedCounter(Counter[str]):
    """A counter whose first read of a new key gives the GIL away for a moment: the point where
    another thread can run in the middle of ``counters[name] += 1`` (read, add, store)."""

    def __missing__(self, key: str) -> int:
        time.sleep(0.01)
        return 0


def hammer(write: object, threads: int = 4) -> None:
    workers = [threading.Thread(target=write) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_increments_from_several_threads_are_all_counted() -> None:
    stats = SelfStats()
    stats.counters = PreemptedCounter()
    hammer(lambda: stats.incr("listener.tcp.connections"))
    assert stats.take() == {"listener.tcp.connections": 4}


def test_rejects_from_several_threads_are_all_counted_and_logged_once() -> None:
    stats = SelfStats(log_interval=3600.0)
    stats.counters = PreemptedCounter()
    hammer(lambda: stats.reject("too_long", "tcp line over 10 bytes", b"x" * 20))
    assert stats.take() == {"rejected.too_long": 4}
    assert stats._suppressed["too_long"] == 3  # one logged, three said to be not logged


def test_take_reports_each_increase_once() -> None:
    stats = SelfStats()
    stats.incr("flush.count")
    stats.incr("received.lines", 5)
    assert stats.take() == {"flush.count": 1, "received.lines": 5}
    stats.incr("received.lines", 2)
    assert stats.take() == {"received.lines": 2}
    assert stats.take() == {}
    assert stats.totals() == {"flush.count": 1, "received.lines": 7}
