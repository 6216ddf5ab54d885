"""The forwarder contract as a pytest suite: every built-in forwarder passes it, and a third
party runs it on theirs.

Subclass the suite of your forwarder's kind and give it a ``harness`` fixture: an object that
builds your forwarder against a working backend and says how much reached that backend::

    import pytest
    from forwarders.contract import AggregateContract

    class MyHarness:
        def make(self, debug_mode: bool = False, queue_size: int = 64) -> MyForwarder: ...
        def delivered(self) -> int: ...   # series (aggregate) or lines (relay) received so far

    class TestMyForwarder(AggregateContract):
        @pytest.fixture
        def harness(self, tmp_path):
            return MyHarness(tmp_path)

What is checked (see :mod:`forwarders.base` for the contract itself): what is submitted is
delivered, and ``sent`` says so; ``close`` works without ``start`` and after it, keeps its
deadline with a backend that hangs, and reports (and counts) what it did not deliver;
``submit``/``submit_lines`` never block, and a full queue drops and counts; a failing send is
counted and the forwarder goes on; every ``stats()`` key is declared in ``TOTALS`` or
``LEVELS``, totals never decrease, values are finite; ``debug_mode`` sends nothing and logs
what it would have sent; a forwarder with ``prepare`` returns data ``marshal`` carries unchanged
and delivers a prepared flush whole, the series its preparation did not see included, from a
plain snapshot and from a ``DeferredSnapshot`` (series made when read) alike. The suite
stalls a forwarder by holding the hook its base class calls on the forwarder's own thread
(``send`` for aggregate forwarders, ``send_round`` for relays), so it needs no cooperation from
the backend.
"""

from __future__ import annotations

import dataclasses
import logging
import marshal
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import pytest

from forwarders.aggregate import AggregateForwarder
from forwarders.base import Forwarder
from forwarders.relay import RelayForwarder
from pystatsd.sample import COUNTER, GAUGE, TIMER
from pystatsd.snapshot import DeferredSnapshot, SeriesStats, Snapshot

__all__ = ["AggregateContract", "Harness", "RelayContract", "sample_snapshot"]

DEADLINE_SLACK = 3.0
"""Seconds a ``close(timeout)`` may overrun its timeout before the suite calls the deadline
broken: generous, since a loaded CI machine schedules threads late, and still far below the
'waits forever on a dead backend' failure it exists to catch."""


class Harness(Protocol):
    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any: ...

    def delivered(self) -> int: ...


def sample_snapshot(n: int = 3, start: float = 1_700_000_000.0) -> Snapshot:
    """A flush of ``n`` series of mixed types, each a distinct series."""
    kinds = [(COUNTER, {"count": 2.0, "rate": 0.2}), (GAUGE, {"value": -1.5}),
             (TIMER, {"count": 2.0, "sum": 3.0, "min": 1.0, "max": 2.0, "mean": 1.5,
                      "median": 1.5, "stddev": 0.5, "p50": 1.0, "p99": 2.0})]
    series = tuple(SeriesStats(f"contract.m{i}", kinds[i % 3][0], (("env", "test"),),
                               dict(kinds[i % 3][1])) for i in range(n))
    return Snapshot(start, 10.0, "contract-host", series)


def _wait(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _check_stats(forwarder: Forwarder, before: dict[str, float] | None = None) -> dict[str, float]:
    stats = forwarder.stats()
    for key, value in stats.items():
        kind = type(forwarder).stat_kind(key)  # KeyError: undeclared
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
        if before is not None and kind == "total" and key in before:
            assert value >= before[key], f"total {key} went down: {before[key]} -> {value}"
    return stats


class _Common:
    """Checks shared by both kinds; ``_feed`` and ``_stall`` are per kind."""

    ITEMS = 6

    def _feed(self, forwarder: Any, batches: int = 2) -> int:
        raise NotImplementedError

    STALL_HOOK = ""
    """The hook the kind's base class calls on the forwarder's own thread."""

    @contextmanager
    def _stall(self, forwarder: Any) -> Iterator[threading.Event]:
        """Hold the forwarder's thread inside its hook until the block ends."""
        release = threading.Event()
        real = getattr(forwarder, self.STALL_HOOK)

        def stalled(*args: Any) -> None:
            release.wait(30)
            real(*args)

        setattr(forwarder, self.STALL_HOOK, stalled)
        try:
            yield release
        finally:
            release.set()

    def test_delivers_what_is_submitted(self, harness: Harness) -> None:
        forwarder = harness.make()
        forwarder.start()
        try:
            fed = self._feed(forwarder)
            assert _wait(lambda: harness.delivered() >= fed), \
                f"{harness.delivered()} of {fed} delivered"
        finally:
            left = forwarder.close(10)
        assert left == 0
        assert harness.delivered() == fed
        stats = _check_stats(forwarder)
        assert stats["submitted"] == fed and stats["sent"] == fed
        assert stats["undelivered_at_close"] == 0

    def test_close_without_start_and_twice_is_harmless(self, harness: Harness) -> None:
        assert harness.make().close(1) == 0
        forwarder = harness.make()
        forwarder.start()
        assert forwarder.close(5) == 0
        _check_stats(forwarder)

    def test_close_keeps_its_deadline_and_reports_what_it_lost(
            self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        forwarder = harness.make()
        forwarder.start()
        with self._stall(forwarder):
            fed = self._feed(forwarder, batches=3)
            began = time.monotonic()
            left = forwarder.close(0.5)
            took = time.monotonic() - began
        assert took < 0.5 + DEADLINE_SLACK, f"close(0.5) took {took:.1f} s"
        assert 0 < left <= fed
        assert forwarder.stats()["undelivered_at_close"] == left
        assert "undelivered" in caplog.text
        assert harness.delivered() + left <= fed

    def test_stats_are_declared_finite_and_totals_never_decrease(self, harness: Harness) -> None:
        forwarder = harness.make()
        before = _check_stats(forwarder)
        forwarder.start()
        try:
            self._feed(forwarder)
            middle = _check_stats(forwarder, before)
            _wait(lambda: forwarder.stats()["sent"] >= middle["submitted"])
            after = _check_stats(forwarder, middle)
        finally:
            forwarder.close(5)
        _check_stats(forwarder, after)

    def test_debug_mode_sends_nothing_and_logs_it(self, harness: Harness,
                                                  caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="pystatsd.forwarders")
        forwarder = harness.make(debug_mode=True)
        forwarder.start()
        try:
            self._feed(forwarder)
            assert _wait(lambda: "debug_mode" in caplog.text and "not sent" in caplog.text)
        finally:
            forwarder.close(5)
        time.sleep(0.2)  # anything sent by mistake has time to arrive
        assert harness.delivered() == 0


class AggregateContract(_Common):
    """The contract of an :class:`~forwarders.AggregateForwarder`."""

    def _feed(self, forwarder: Any, batches: int = 2) -> int:
        assert isinstance(forwarder, AggregateForwarder)
        for index in range(batches):
            assert forwarder.submit(sample_snapshot(3, start=1_700_000_000.0 + 10 * index))
        return 3 * batches

    STALL_HOOK = "send"

    def test_submit_never_blocks_and_a_full_queue_drops_and_counts(self,
                                                                   harness: Harness) -> None:
        forwarder = harness.make(queue_size=2)
        forwarder.start()
        results: list[bool] = []
        with self._stall(forwarder):
            submitter = threading.Thread(
                target=lambda: results.extend(forwarder.submit(sample_snapshot(4))
                                              for _ in range(10)))
            submitter.start()
            submitter.join(10)
            assert not submitter.is_alive(), "submit blocked on a stalled backend"
            refused = results.count(False)
            # one snapshot may be in the stalled send, two wait in the queue
            assert refused >= 7
            assert forwarder.stats()["dropped_queue_full"] == 4 * refused
        forwarder.close(10)
        assert forwarder.stats()["submitted"] == 4 * results.count(True)

    def test_a_failing_send_is_counted_and_the_forwarder_goes_on(self, harness: Harness) -> None:
        forwarder = harness.make()
        real = forwarder.send
        failures = [1]

        def failing_once(snapshot: Snapshot) -> None:
            if failures[0]:
                failures[0] -= 1
                raise ConnectionError("backend down")
            real(snapshot)

        forwarder.send = failing_once
        forwarder.start()
        try:
            assert forwarder.submit(sample_snapshot(3))
            assert forwarder.submit(sample_snapshot(2, start=1_700_000_010.0))
            assert _wait(lambda: harness.delivered() >= 2)
        finally:
            forwarder.close(10)
        assert forwarder.stats()["send_errors"] == 1
        assert forwarder.stats()["sent"] == 2


    def test_a_prepared_flush_is_delivered_whole(self, harness: Harness) -> None:
        forwarder = harness.make()
        flush = sample_snapshot(5)
        # As the daemon does it: prepared without the last series (its self-metrics come
        # after the ones the snapshot child finished).
        prepared = type(forwarder).prepare(forwarder.config,
                                           dataclasses.replace(flush, series=flush.series[:4]))
        if prepared is None:
            pytest.skip("no prepare: every flush goes to send")
        assert marshal.loads(marshal.dumps(prepared)) == prepared
        # And as the daemon hands a flush every forwarder prepared: series made on demand.
        later = sample_snapshot(5, start=flush.start + flush.interval)
        deferred = DeferredSnapshot.of(later.start, later.interval, later.host, 4,
                                       lambda: list(later.series[:4]), later.series[4:])
        prepared_later = type(forwarder).prepare(
            forwarder.config, dataclasses.replace(later, series=later.series[:4]))
        forwarder.start()
        try:
            assert forwarder.submit(flush, prepared)
            assert forwarder.submit(deferred, prepared_later)
            assert _wait(lambda: harness.delivered() >= 10), \
                f"{harness.delivered()} of 10 delivered"
        finally:
            assert forwarder.close(10) == 0
        assert harness.delivered() == 10
        assert forwarder.stats()["sent"] == 10


class RelayContract(_Common):
    """The contract of a :class:`~forwarders.RelayForwarder`."""

    def _feed(self, forwarder: Any, batches: int = 2) -> int:
        assert isinstance(forwarder, RelayForwarder)
        for index in range(batches):
            lines = [f"contract.m{index}_{i}:{i}|c".encode() for i in range(3)]
            assert forwarder.submit_lines(lines)
        return 3 * batches

    STALL_HOOK = "send_round"

    def test_submit_never_blocks_and_a_full_queue_drops_and_counts(self,
                                                                   harness: Harness) -> None:
        forwarder = harness.make(queue_size=5)
        forwarder.start()
        results: list[bool] = []
        with self._stall(forwarder):
            time.sleep(2 * forwarder.round_interval + 0.05)  # the thread is now held
            submitter = threading.Thread(
                target=lambda: results.extend(forwarder.submit_lines([b"x:1|c", b"y:1|c"])
                                              for _ in range(20)))
            submitter.start()
            submitter.join(10)
            assert not submitter.is_alive(), "submit_lines blocked on a stalled sender"
            assert results.count(True) == 5
            assert forwarder.stats()["dropped_queue_full"] == 2 * 15
        forwarder.close(10)
