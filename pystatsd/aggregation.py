"""The metric manager: one interval's aggregates per series, swapped out at each flush.

A series is ``(name, type, tags)``; tags are sorted, so their order never splits a series.
Each series of the current interval has one mutable *cell* in the :class:`IntervalTable`:

  counter            ``[sum of value / rate]``
  gauge              ``[absolute value or None, sum of +/- deltas since it]``
  timer, histogram   :class:`Distribution`
  set                ``dict`` of members -> None (a ``dict`` of str keys and None values is
                     not tracked by the cyclic GC, a ``set`` always is: a full collection
                     walked every member of every set, ~80 ns each, holding the GIL)
  trace              ``[events, each weighted 1 / rate]``

The ingest fast path (:mod:`pystatsd.ingest`) updates these cells inline, so the update rules
below (:meth:`MetricMgr.update`) and that code must stay equal; a test feeds the same input both
ways. State carried across intervals (gauge values, cumulative trace counts, idle counts) lives
in the manager, not the table, and only :meth:`MetricMgr.snapshot` touches it.
"""

from __future__ import annotations

import math
import operator
import time
from array import array
from collections.abc import Callable
from itertools import repeat
from typing import Any

from ddsketch import DDSketch

from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample, Tags
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import SeriesStats, Snapshot

Config = dict[str, Any]
SeriesKey = tuple[str, str, Tags]
"""(name, type, tags): what makes two samples the same series."""
Percentiles = list[tuple[float, str]]
"""The configured percentiles with their stats keys: [(99.9, "p99_9"), ...]."""

SNAPSHOT_SLICE = 0.0005
SNAPSHOT_PAUSE = 0.002
"""A snapshot works at most ``SNAPSHOT_SLICE`` seconds at a time, then sleeps ``SNAPSHOT_PAUSE``.
It runs on the flusher thread and needs the GIL; the receive thread gives the GIL up at every
``recv``, so without pauses it would get the GIL back only once per switch interval (5 ms) and
handle one datagram each time while a large snapshot runs: measured, it kept ~22% of its rate,
and the socket buffer overflowed. With these pauses it keeps ~80% (the receive path needs
70-85% of a core at the target rates), and a snapshot takes ~5 times its CPU time in wall
time: about 1.6 s at 700k lines/s with the default 10 s interval."""

_RANK_EPSILON = 1e-9
"""Slack when comparing a cumulative weight with a rank, so that 7 * 100 / 100 landing a hair
above 7 in floating point does not push nearest-rank one element up."""


class Distribution:
    """The samples of one timer or histogram series in one interval.

    Samples sent at rate 1 go to ``values`` (the array the fast path appends to); samples with a
    sample rate go to ``weighted`` as (value, 1 / rate). When either list passes
    ``exact_limit`` samples both are folded into a DDSketch, and exact count, sum, min, max,
    mean and variance are kept beside it, so only the median and percentiles become
    approximate."""

    __slots__ = ("values", "weighted", "sketch", "count", "total", "low", "high", "mean", "m2")

    def __init__(self) -> None:
        # An array of C doubles: 8 bytes a sample where a list of floats takes 32.
        self.values: array[float] = array("d")
        self.weighted: list[tuple[float, float]] = []
        self.sketch: DDSketch | None = None
        # Exact moments of what was folded into the sketch (Chan et al.'s parallel update).
        self.count = 0.0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, value: float, weight: float, exact_limit: int, accuracy: float) -> None:
        # Each list is checked on its own, as the fast path checks ``values`` alone: so a series
        # mixing rates stays exact up to twice the limit, and both paths fold at the same sample.
        if weight == 1.0:
            self.values.append(value)
            if len(self.values) > exact_limit:
                self.fold(accuracy)
        else:
            self.weighted.append((value, weight))
            if len(self.weighted) > exact_limit:
                self.fold(accuracy)

    def fold(self, accuracy: float) -> None:
        """Move the kept samples into the sketch and the exact moments; empty both lists."""
        values, weighted = self.values, self.weighted
        if not values and not weighted:
            return
        if self.sketch is None:
            self.sketch = DDSketch(relative_accuracy=accuracy)
        add = self.sketch.add
        for value in values:
            add(value)
        for value, weight in weighted:
            add(value, weight)
        count = len(values) + math.fsum(w for _, w in weighted)
        total = math.fsum(values) + math.fsum(v * w for v, w in weighted)
        mean = total / count
        deviations = list(map(operator.sub, values, repeat(mean)))
        m2 = (math.fsum(map(operator.mul, deviations, deviations))
              + math.fsum(w * (v - mean) ** 2 for v, w in weighted))
        low = min(min(values, default=math.inf), min((v for v, _ in weighted), default=math.inf))
        high = max(max(values, default=-math.inf),
                   max((v for v, _ in weighted), default=-math.inf))
        if self.count:
            delta = mean - self.mean
            merged = self.count + count
            self.m2 += m2 + delta * delta * self.count * count / merged
            self.mean += delta * count / merged
            self.count = merged
        else:
            self.count, self.mean, self.m2 = count, mean, m2
        self.total += total
        self.low = min(self.low, low)
        self.high = max(self.high, high)
        del self.values[:]  # in place: the fast path holds this very array
        self.weighted.clear()

    def stats(self, percentiles: Percentiles, accuracy: float) -> dict[str, float]:
        """The interval's count, sum, min, max, mean, median, stddev and percentiles."""
        if self.sketch is not None:
            self.fold(accuracy)
            return self._sketch_stats(percentiles)
        if not self.weighted:
            ordered = self.values.tolist()
            ordered.sort()
            return _unit_stats(ordered, percentiles)
        return _weighted_stats(_pairs(self.values, self.weighted), percentiles)

    def _sketch_stats(self, percentiles: Percentiles) -> dict[str, float]:
        assert self.sketch is not None

        sketch = self.sketch

        def quantile(q: float) -> float:
            # The sketch's answer is within the relative accuracy; it may still stray past the
            # exact extremes, which we know, so keep it inside them.
            found = sketch.get_quantile_value(q)
            return min(max(found if found is not None else self.mean, self.low), self.high)

        stats = {
            "count": self.count,
            "sum": self.total,
            "min": self.low,
            "max": self.high,
            "mean": self.mean,
            "median": quantile(0.5),
            "stddev": math.sqrt(max(self.m2, 0.0) / self.count),
        }
        for pct, key in percentiles:
            stats[key] = quantile(pct / 100.0)
        return stats

    def release(self) -> None:
        """Free the samples once reported (a stale fast-path cache entry may still hold them)."""
        del self.values[:]
        self.weighted.clear()
        self.sketch = None


def _pairs(values: array[float], weighted: list[tuple[float, float]]) -> list[tuple[float, float]]:
    pairs = [(value, 1.0) for value in values]
    pairs.extend(weighted)
    pairs.sort()
    return pairs


def _unit_stats(ordered: list[float], percentiles: Percentiles) -> dict[str, float]:
    """Stats of samples all sent at rate 1 (the usual case): plain nearest-rank percentiles."""
    count = len(ordered)
    total = sum(ordered)
    mean = total / count
    middle = count // 2
    median = ordered[middle] if count % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    stats = {
        "count": float(count),
        "sum": total,
        "min": ordered[0],
        "max": ordered[-1],
        "mean": mean,
        "median": median,
        # sqrt(Σ (x - mean)²) in one C call (with compensated summation), where a list of
        # deviations and one of their squares would make two float objects per sample.
        "stddev": math.dist(ordered, (mean,) * count) / math.sqrt(count),
    }
    for pct, key in percentiles:
        rank = max(1, math.ceil(pct * count / 100.0 - _RANK_EPSILON))
        stats[key] = ordered[min(rank, count) - 1]
    return stats


def _weighted_stats(pairs: list[tuple[float, float]], percentiles: Percentiles) -> dict[str, float]:
    """Stats of samples with sample rates: each counts 1 / rate times. With all weights 1 this
    gives exactly :func:`_unit_stats`."""
    count = math.fsum(w for _, w in pairs)
    total = math.fsum(v * w for v, w in pairs)
    mean = total / count
    stats = {
        "count": count,
        "sum": total,
        "min": pairs[0][0],
        "max": pairs[-1][0],
        "mean": mean,
        "median": _weighted_median(pairs, count),
        "stddev": math.sqrt(math.fsum(w * (v - mean) ** 2 for v, w in pairs) / count),
    }
    for pct, key in percentiles:
        stats[key] = _weighted_rank(pairs, pct * count / 100.0)
    return stats


def _weighted_rank(pairs: list[tuple[float, float]], rank: float) -> float:
    """The smallest value whose cumulative weight reaches ``rank`` (nearest-rank)."""
    cumulative = 0.0
    for value, weight in pairs:
        cumulative += weight
        if cumulative >= rank - _RANK_EPSILON:
            return value
    return pairs[-1][0]


def _weighted_median(pairs: list[tuple[float, float]], count: float) -> float:
    """The value at half the weight; the mean of two neighbours when the half falls between
    them (the usual median for equal weights)."""
    half = count / 2.0
    cumulative = 0.0
    for index, (value, weight) in enumerate(pairs):
        cumulative += weight
        if cumulative > half + _RANK_EPSILON:
            return value
        if cumulative >= half - _RANK_EPSILON and index + 1 < len(pairs):
            return (value + pairs[index + 1][0]) / 2.0
    return pairs[-1][0]


def percentile_key(pct: float) -> str:
    """The stats key of a percentile: 50 -> p50, 99.9 -> p99_9."""
    if float(pct).is_integer():
        return f"p{int(pct)}"
    return "p" + repr(float(pct)).replace(".", "_")


def _series_order(series: SeriesStats) -> SeriesKey:
    return (series.name, series.type, series.tags)


class IntervalTable:
    """The cells of one interval's series, keyed by :data:`SeriesKey`."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        self.series: dict[SeriesKey, Any] = {}

    def __len__(self) -> int:
        return len(self.series)


def new_cell(kind: str) -> Any:
    """A fresh cell for one series of type ``kind`` (see the module docstring)."""
    if kind == COUNTER or kind == TRACE:
        return [0.0]
    if kind == GAUGE:
        return [None, 0.0]
    if kind == SET:
        return {}
    if kind == TIMER or kind == HISTOGRAM:
        return Distribution()
    raise ValueError(f"unknown metric type {kind!r}")


class MetricMgr:
    """Aggregates samples per series for the current interval and turns a finished interval
    into a :class:`~pystatsd.snapshot.Snapshot`.

    Threading: the daemon serializes :meth:`add`, :meth:`cell` and :meth:`swap` (and the fast
    path) under its ingest lock; :meth:`snapshot` runs on the flusher thread without it and is
    the only reader and writer of the carried state."""

    def __init__(self, config: Config, stats: SelfStats | None = None) -> None:
        self.stats = stats if stats is not None else SelfStats()
        """Where ``too_many_series`` rejects are counted; the pipeline points it at the
        daemon's own."""
        self._table = IntervalTable()
        self.epoch = 0
        """Incremented by each :meth:`swap`: a fast-path cache entry bound to a cell of an
        older epoch must look the cell up again."""
        self._publish_counts: Callable[[], None] | None = None
        self._gauges: dict[SeriesKey, list[float]] = {}  # key -> [value, idle flushes]
        self._traces: dict[SeriesKey, list[float]] = {}  # key -> [events so far, idle flushes]
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take new limits after a reload; current aggregates and carried state are kept."""
        self.percentiles: Percentiles = [(float(p), percentile_key(p)) for p in
                                         config["percentiles"]]
        self.exact_limit: int = config["timer_exact_samples"]
        self.accuracy: float = config["sketch_relative_accuracy"]
        self.idle_expiry: int = config["idle_expiry_intervals"]
        self.trace_cumulative: bool = config["trace_cumulative"]
        self.max_series: int = config["max_series"]

    # -- receiving (under the ingest lock) -------------------------------------------------
    def add(self, sample: Sample) -> bool:
        """Aggregate one sample (agent tags already merged); False if it was dropped because
        its series would pass ``max_series``. The client's timestamp is not used: a sample
        counts in the interval it arrives in."""
        key = (sample.name, sample.type, sample.tags)
        cell = self._table.series.get(key)
        if cell is None:
            cell = self.cell(key)
            if cell is None:
                return False
        self.update(sample.type, cell, sample.value, 1.0 / sample.rate, sample.delta)
        return True

    def cell(self, key: SeriesKey) -> Any:
        """The current interval's cell of series ``key``, made if new; None (counted as
        ``too_many_series``) when a new series would pass ``max_series``."""
        series = self._table.series
        cell = series.get(key)
        if cell is None:
            if len(series) >= self.max_series:
                self.stats.reject("too_many_series",
                                  f"{len(series)} series this interval (max_series)",
                                  key[0] + "|" + key[1])
                return None
            cell = series[key] = new_cell(key[1])
        return cell

    def update(self, kind: str, cell: Any, value: float | str, weight: float,
               delta: bool) -> None:
        """Apply one value to a series' cell. ``weight`` is 1 / sample rate: counters, traces
        and distributions count it; gauges and sets ignore sample rates (as Etsy statsd does)."""
        if kind == COUNTER:
            cell[0] += value * weight  # type: ignore[operator]
        elif kind == GAUGE:
            if delta:
                cell[1] += value
            else:
                cell[0] = value
                cell[1] = 0.0
        elif kind == TIMER or kind == HISTOGRAM:
            cell.add(value, weight, self.exact_limit, self.accuracy)
        elif kind == SET:
            cell[value] = None
        elif kind == TRACE:
            cell[0] += weight

    def fold(self, key: SeriesKey) -> None:
        """Fold a distribution whose ``values`` grew past ``timer_exact_samples`` into its
        sketch (the fast path calls this; :meth:`update` checks by itself)."""
        cell = self._table.series.get(key)
        if isinstance(cell, Distribution):
            cell.fold(self.accuracy)

    def set_count_publisher(self, publish: Callable[[], None]) -> None:
        """Have ``publish`` called at the start of each :meth:`swap` (under the ingest lock):
        the pipeline keeps its counts in plain ints and publishes them there, so they land in
        the interval they belong to. A pipeline built after a reload replaces the old one,
        whose pending counts are published first."""
        if self._publish_counts is not None:
            self._publish_counts()
        self._publish_counts = publish

    def swap(self) -> IntervalTable:
        """Hand back the finished interval's table and start a fresh one (O(1))."""
        if self._publish_counts is not None:
            self._publish_counts()
        finished = self._table
        self._table = IntervalTable()
        self.epoch += 1
        return finished

    def series_count(self) -> int:
        """Series in the current interval's table (what ``max_series`` limits)."""
        return len(self._table.series)

    # -- flushing (flusher thread) ---------------------------------------------------------
    def snapshot(self, table: IntervalTable, start: float, interval: float,
                 host: str) -> Snapshot:
        """Turn a finished table into its statistics, update the carried gauges and traces,
        and free the table's samples. ``interval`` is the real elapsed time (counter rates)."""
        out: list[SeriesStats] = []
        seconds = interval if interval > 0 else 1.0
        gauges = self._gauges
        traces = self._traces
        # Read once: a reload may change them (under the ingest lock) while this runs.
        percentiles, accuracy = self.percentiles, self.accuracy
        cumulative, idle_expiry = self.trace_cumulative, self.idle_expiry
        clock = time.perf_counter
        slice_end = clock() + SNAPSHOT_SLICE
        for done, (key, cell) in enumerate(table.series.items()):
            if done & 7 == 0 and clock() > slice_end:
                time.sleep(SNAPSHOT_PAUSE)  # let the receive thread drain its socket
                slice_end = clock() + SNAPSHOT_SLICE
            name, kind, tags = key
            if kind == COUNTER:
                stats = {"count": cell[0], "rate": cell[0] / seconds}
            elif kind == GAUGE:
                base, delta = cell
                carried = gauges.get(key)
                if base is None:  # only deltas this interval: they move the carried value
                    base = carried[0] if carried is not None else 0.0
                value = base + delta
                if carried is None:
                    gauges[key] = [value, 0]
                else:  # in place: one GC-tracked list less made and freed per gauge and flush
                    carried[0] = value
                    carried[1] = 0
                stats = {"value": value}
            elif kind == TIMER or kind == HISTOGRAM:
                stats = cell.stats(percentiles, accuracy)
                cell.release()
            elif kind == SET:
                stats = {"count": float(len(cell))}
                cell.clear()
            else:  # trace
                count = cell[0]
                if cumulative:
                    carried = traces.get(key)
                    count += carried[0] if carried is not None else 0.0
                    traces[key] = [count, 0]
                stats = {"count": count}
            out.append(SeriesStats(name, kind, tags, stats))
        for carried_state, stat_name in ((gauges, "value"), (traces, "count")):
            for done, (key, entry) in enumerate(list(carried_state.items())):
                if done & 63 == 0 and clock() > slice_end:
                    time.sleep(SNAPSHOT_PAUSE)
                    slice_end = clock() + SNAPSHOT_SLICE
                if key in table.series:
                    continue
                entry[1] += 1
                if entry[1] >= idle_expiry:
                    del carried_state[key]
                else:
                    out.append(SeriesStats(key[0], key[1], key[2], {stat_name: entry[0]}))
        if not cumulative:
            traces.clear()
        out.sort(key=_series_order)
        return Snapshot(start, interval, host, tuple(out))

    # -- the admin console's view (under the ingest lock) -------------------------------
    def current(self, kind: str) -> dict[SeriesKey, Any]:
        """The current interval's value of every series of type ``kind``: a counter's sum, a
        gauge's value (carried ones included), a distribution's kept samples, a set's members."""
        series = self._table.series
        if kind == GAUGE:
            values: dict[SeriesKey, Any] = {key: entry[0] for key, entry in
                                            list(self._gauges.items()) if entry[1] != math.inf}
            for key, (base, delta) in [(k, c) for k, c in series.items() if k[1] == GAUGE]:
                carried = values.get(key, 0.0)
                values[key] = (carried if base is None else base) + delta
            return values
        cells = {key: cell for key, cell in series.items() if key[1] == kind}
        if kind == TIMER or kind == HISTOGRAM:
            return {key: [*cell.values.tolist(), *(v for v, _ in cell.weighted)]
                    for key, cell in cells.items()}
        if kind == SET:
            return {key: sorted(map(str, cell)) for key, cell in cells.items()}
        return {key: cell[0] for key, cell in cells.items()}

    def forget(self, keys: list[SeriesKey]) -> int:
        """Drop these series from the current interval (and a gauge's carried value, which a
        later delta then starts from 0), as Etsy statsd's ``del*`` do; return how many were
        known. The carried entry is marked, not deleted, since the flush thread owns that
        table and deletes what it marks."""
        forgotten = 0
        for key in keys:
            known = self._table.series.pop(key, None) is not None
            carried = self._gauges.get(key) if key[1] == GAUGE else None
            if carried is not None and carried[1] != math.inf:
                carried[0], carried[1] = 0.0, math.inf
                known = True
            forgotten += known
        self.epoch += 1  # the fast path's entries may hold the cells just dropped
        return forgotten
