"""The metric manager: one interval's aggregates per series, swapped out at each flush, and the
receive fast path that updates them.

A series is ``(name, type, tags)``; tags are sorted, so their order never splits a series.
Each series of the current interval has one mutable *cell* in the :class:`IntervalTable`:

  counter            ``[sum of value / rate]``
  gauge              ``[absolute value or None, sum of +/- deltas since it]``
  timer, histogram   :class:`~pystatsd.distribution.Distribution`
  set                the members' 64-bit hashes (``pystatsd.set_members``): a
                     ``MemberSet`` of the compiled module (8 bytes a slot) where the compiled
                     line cache runs, else a ``dict`` of hash -> None (a ``dict`` of int keys
                     and None values is not tracked by the cyclic GC, a ``set`` always is: a
                     full collection walked every member of every set, holding the GIL);
                     both take ``cell[hash] = None``, ``len`` and iteration
  trace              ``[events, each weighted 1 / rate]``

The update rules are :meth:`MetricMgr.update`. :class:`LineCache`, the fast path the ingest
pipeline hands its statsd lines to, applies the same rules inline (a call per line costs more
than the update itself); both live here so that a change to one is made beside the other, and a
test feeds the same values both ways and compares the cells. Nothing here calls back into
ingest: the pipeline decodes and tags what the cache does not know and tells it with
:meth:`LineCache.remember`.

State carried across intervals (gauge values, cumulative trace counts, idle counts) lives in
the manager, not the table, and only :meth:`MetricMgr.finish` changes it; :meth:`MetricMgr.cell`
reads whether a key is carried, since every series held, carried or not, counts toward
``max_series``.

A sample whose aggregate would not be finite is rejected (``overflow``) by both paths alike;
:meth:`MetricMgr.finish` never emits a non-finite statistic either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pystatsd.distribution import Distribution, Percentiles, append_sample, percentile_key
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample, Tags
from pystatsd.selfstats import SelfStats
from pystatsd.set_members import member_hash, text_member_hash
from pystatsd.snapshot import ETSY_TIMER_STATS, Event, ExtendedSeriesStats, SeriesStats

log = logging.getLogger("pystatsd.aggregation")

Config = dict[str, Any]
SeriesKey = tuple[str, str, Tags]
"""(name, type, tags): what makes two samples the same series."""

SERIES_WARNING_FILL = 0.8
"""A warning is logged (at most every ``SERIES_WARNING_EVERY`` seconds) when a new series takes
the table past this fraction of ``max_series``."""
SERIES_WARNING_EVERY = 60.0
SHRINK_AFTER = 4096
"""A carried table that had at least this many entries and lost half of them to idle expiry is
copied, so that the memory of a burst of names is given back (a dict never shrinks by deleting);
the same size of drop in the interval's own table also counts as the end of a burst (see
:attr:`MetricMgr.memory_generation`)."""


def _load_malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()

SNAPSHOT_SLICE = 0.0005
SNAPSHOT_PAUSE = 0.002
""":meth:`MetricMgr.finish` works at most ``SNAPSHOT_SLICE`` seconds at a time, then sleeps
``SNAPSHOT_PAUSE``. It runs on the daemon's main thread and needs the GIL; the receive thread
gives the GIL up at every ``recv``, so without pauses it would get the GIL back only once per
switch interval (5 ms) and handle one datagram each time while a large table is finished:
measured, it kept ~22% of its rate, and the socket buffer overflowed. With these pauses it
keeps ~80% (the receive path needs 70-85% of a core at the target rates), and finishing takes
~5 times its CPU time in wall time: about 1.6 s at 700k lines/s with the default 10 s
interval."""


def _never_late() -> float:
    """The clock of an unpaced :meth:`MetricMgr.finish`: no slice ever ends."""
    return -math.inf
DISTRIBUTION_LIMIT = 1e100
"""A timer or histogram sample whose value or weight (1 / sample rate) is larger than this in
magnitude is rejected as ``overflow``: the squares of deviations in the stddev, times a
weight, then stay below 4e300, so that summing millions of them stays finite."""


def _series_order(series: SeriesStats) -> tuple[str, str, Tags, float]:
    stamp = series.timestamp
    return (series.name, series.type, series.tags, -1.0 if stamp is None else stamp)


def _all_finite(stats: dict[str, float]) -> bool:
    total = sum(stats.values())
    if total - total == 0.0:
        return True  # the usual case: one C call
    # Finite statistics can still sum past ±1.8e308.
    return all(value - value == 0.0 for value in stats.values())


class IntervalTable:
    """The cells of one interval's series, keyed by :data:`SeriesKey`, and the cells of the
    samples stamped outside the interval and passed through, keyed by series and second."""

    __slots__ = ("series", "carried_again", "carryable", "stamped", "events")

    def __init__(self) -> None:
        self.series: dict[SeriesKey, Any] = {}
        self.carried_again = 0
        """Gauges and traces made here that the manager already carried (held once, not
        twice)."""
        self.carryable = 0
        """Gauges and traces made here that it did not: the flush may carry them on."""
        self.stamped: dict[tuple[SeriesKey, float], Any] = {}
        self.events: list[Event] = []
        """DogStatsD events and service checks, in arrival order: forwarded, not aggregated."""

    def __len__(self) -> int:
        return len(self.series)


def new_cell(kind: str) -> Any:
    """A fresh cell for one series of type ``kind`` (see the module docstring)."""
    if kind == COUNTER or kind == TRACE:
        return [0.0]
    if kind == GAUGE:
        return [None, 0.0]
    if kind == SET:
        return new_set_cell()
    if kind == TIMER or kind == HISTOGRAM:
        return Distribution()
    raise ValueError(f"unknown metric type {kind!r}")


def free_cell(kind: str, cell: Any) -> None:
    """Let go of a finished cell's samples or members now. A line-cache entry keeps the cell
    it was bound to until its series has a line again, so an idle timer would otherwise keep
    its last interval's samples (up to ``timer_exact_samples`` doubles) for as long as its
    entry lives; the forked snapshot frees them in its child only."""
    if kind == TIMER or kind == HISTOGRAM:
        cell.release()
    elif kind == SET:
        cell.clear()


class MetricMgr:
    """Aggregates samples per series for the current interval and turns a finished interval
    into its :class:`~pystatsd.snapshot.SeriesStats`.

    Threading: the daemon serializes :meth:`add`, :meth:`cell` and :meth:`swap` (and the
    :class:`LineCache`) under its ingest lock; :meth:`finish` runs on the main thread without
    it and is the only reader and writer of the carried state."""

    gauge_clock: list[int] | None = None
    """None here: gauge cells are plain. A manager whose gauge cells record when they changed
    (``pystatsd.workers.gauge_order``) sets the one-item list holding the millisecond the
    payload being applied arrived; the line caches read it once per payload and take their
    timed gauge arm (:func:`update_arm`)."""
    reads_clock: bool = False
    """With a ``gauge_clock``: False, whoever delivers a payload has put its millisecond there
    (``gauge_order.stamp``, or a test's chosen times); True, the line caches read the clock
    into it as they begin a payload (the compiled one in C), and the slow path as it changes
    a gauge (a receive worker's manager: no Python stamp per payload)."""

    def __init__(self, config: Config, stats: SelfStats | None = None) -> None:
        self.stats = stats if stats is not None else SelfStats()
        """Where ``too_many_series`` rejects are counted; the pipeline points it at the
        daemon's own."""
        self._table = IntervalTable()
        self.epoch = 0
        """Incremented by each :meth:`swap`: a :class:`LineCache` entry bound to a cell of an
        older epoch must look the cell up again."""
        self._gauges: dict[SeriesKey, list[float]] = {}  # key -> [value, idle flushes]
        self._traces: dict[SeriesKey, list[float]] = {}  # key -> [events so far, idle flushes]
        self._carried = 0
        """Series carried into the current interval (gauges, cumulative traces): exact after
        :meth:`finish`, an upper bound between :meth:`swap` and the end of :meth:`finish`.
        They count toward ``max_series`` as the table's own series do."""
        self._warned_at = -math.inf
        self.memory_generation = 0
        """Moved on when a burst of series is gone (a carried table copied after expiry, or a
        table half the size of the one before): the line cache then drops its entries, which
        hold the gone series' keys and cells, and the next :meth:`finish` hands the freed
        memory back to the OS (glibc's ``malloc_trim``). Measured: a burst of 300k gauges left
        122 MB of 241 MB resident after expiry without this, 41 MB with it (35 MB before)."""
        self._release_due = False
        self._last_table_size = 0
        self.extra_stats: frozenset[str] = frozenset()
        """The families of extra statistics the running forwarders asked for (the daemon sets
        it from ``Forwarder.needed_stats``); :meth:`finish` computes them."""
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take new limits after a reload; current aggregates and carried state are kept."""
        self.percentiles: Percentiles = [(float(p), percentile_key(p)) for p in
                                         config["percentiles"]]
        self.exact_limit: int = config["timer_exact_samples"]
        self.set_member_limit: int = config["partial_set_members"]
        self.accuracy: float = config["sketch_relative_accuracy"]
        self.idle_expiry: int = config["idle_expiry_intervals"]
        self.trace_cumulative: bool = config["trace_cumulative"]
        self.max_series: int = config["max_series"]
        # Mergeable state only costs when a forwarder sends it (the Kafka `partials` format).
        self.keep_partials: bool = any(
            isinstance(section, dict) and section.get("format") == "partials"
            for section in config.get("forwarders", {}).values())
        if self.keep_partials:  # protobuf and the sketches (~4 MB) only for it; imported
            # here, not again in every flush's forked child
            from pystatsd.global_tier.partial_state import load_set_sketches

            load_set_sketches()
        self._warn_at = math.ceil(self.max_series * SERIES_WARNING_FILL)
        self.flush_interval: float = float(config["flush_interval"])
        self.timestamp_window: float = float(config["timestamp_window_seconds"])
        self.late_samples_pass: bool = config["late_samples"] == "pass"
        self.histogram_buckets = HistogramBuckets(config["histogram_buckets"])

    # -- receiving (under the ingest lock) -------------------------------------------------
    def add(self, sample: Sample) -> bool:
        """Aggregate one sample (agent tags already merged); False if it was dropped because
        its series would pass ``max_series``, or for its client timestamp. A sample stamped
        within the current interval (by the wall clock, intervals aligned as the daemon's
        flushes) counts in it like an unstamped one; one stamped outside it is
        :meth:`_add_stamped`."""
        key = (sample.name, sample.type, sample.tags)
        if sample.timestamp is not None:
            now = time.time()
            start = now - now % self.flush_interval
            if not start <= sample.timestamp < start + self.flush_interval:
                return self._add_stamped(key, sample, now, start)
        cell = self._table.series.get(key)
        if cell is None:
            cell = self.cell(key)
            if cell is None:
                return False
        weight = 1.0 / sample.rate
        if self.update(sample.type, cell, sample.value, weight, sample.delta):
            return True
        self.overflow(key, sample.value, weight)
        return False

    def overflow(self, key: SeriesKey, value: float | str, weight: float) -> None:
        """Count and log one sample :meth:`update` refused (``rejected.overflow``). A timer
        or histogram whose only sample it was leaves the table (an empty distribution has no
        statistics), so the epoch moves on: the line cache must not keep the dropped cell."""
        cell = self._table.series.get(key)
        if (isinstance(cell, Distribution) and not cell.values and not cell.weighted
                and cell.sketch is None):
            del self._table.series[key]
            self.epoch += 1
        self.stats.reject("overflow", f"{key[1]} value {value!r} with weight (1 / sample rate) "
                          f"{weight!r} would make its interval aggregate non-finite", key[0])

    def _add_stamped(self, key: SeriesKey, sample: Sample, now: float, start: float) -> bool:
        """A sample stamped before (late) or after (future) the current interval: counted as
        such; dropped and counted as ``timestamp_out_of_window`` if further than
        ``timestamp_window_seconds`` from now, or as ``late_sample`` with ``late_samples:
        drop``; else aggregated only with the samples of its series stamped in the same second
        (``late_samples: pass``, as the Datadog agent forwards timestamped samples without
        aggregating them) and flushed next with that timestamp."""
        stamp = sample.timestamp
        assert stamp is not None
        where = f"{key[0][:80]}|{key[1]} stamped {stamp:.0f}, now {now:.0f}"
        if abs(stamp - now) > self.timestamp_window:
            self.stats.reject("timestamp_out_of_window",
                              f"{where} (timestamp_window_seconds)", key[0])
            return False
        self.stats.incr("timestamps.late" if stamp < start else "timestamps.future")
        if not self.late_samples_pass:
            self.stats.reject("late_sample", f"{where}, outside the interval (late_samples)",
                              key[0])
            return False
        table = self._table
        second = float(math.floor(stamp))
        cell = table.stamped.get((key, second))
        if cell is None:
            if len(table.series) + len(table.stamped) >= self.max_series:
                self.stats.reject("too_many_series", f"{where} (max_series)", key[0])
                return False
            cell = table.stamped[(key, second)] = new_cell(key[1])
        self.update(sample.type, cell, sample.value, 1.0 / sample.rate, sample.delta)
        return True

    def add_event(self, event: Event) -> bool:
        """Keep one event or service check (agent tags merged) for this interval's flush; False
        (counted as ``too_many_series``) past ``max_series`` of them in one interval."""
        events = self._table.events
        if len(events) >= self.max_series:
            self.stats.reject("too_many_series", f"{len(events)} events this interval "
                              "(max_series)", event.title[:80])
            return False
        events.append(event)
        return True

    def cell(self, key: SeriesKey) -> Any:
        """The current interval's cell of series ``key``, made if new; None (counted as
        ``too_many_series``) when a new series would pass ``max_series``. Every series held
        counts: this interval's and the carried ones (a carried series that comes back is
        held once)."""
        table = self._table
        series = table.series
        cell = series.get(key)
        if cell is None:
            kind = key[1]
            if (kind == GAUGE and key in self._gauges) or (kind == TRACE and key in self._traces):
                table.carried_again += 1
            else:
                held = len(series) + self._carried - table.carried_again
                if held >= self.max_series:
                    self.stats.reject("too_many_series",
                                      f"{held} series held ({len(series)} this interval, "
                                      f"{held - len(series)} carried) = max_series", key[0] +
                                      "|" + kind)
                    return None
                if held + 1 >= self._warn_at:
                    self._warn_fill(held + 1)
                if kind == GAUGE or kind == TRACE:
                    table.carryable += 1
            cell = series[key] = new_cell(kind)
        return cell

    def _warn_fill(self, held: int) -> None:
        now = time.monotonic()
        if now - self._warned_at < SERIES_WARNING_EVERY:
            return
        self._warned_at = now
        log.warning("%d series held, %d%% of max_series (%d): new series will be dropped as "
                    "too_many_series past it; raise max_series (about 1 KB of RSS a series, "
                    "see docs/reliability.md) or find the names that explode", held,
                    100 * held // self.max_series, self.max_series)

    def update(self, kind: str, cell: Any, value: float | str, weight: float,
               delta: bool) -> bool:
        """Apply one value to a series' cell. ``weight`` is 1 / sample rate: counters, traces
        and distributions count it; gauges and sets ignore sample rates (as Etsy statsd does).
        False, the cell untouched, if the value would make an aggregate non-finite (a sum past
        ±1.8e308, a weight of 1 / 5e-324): the caller rejects it as ``overflow``.

        :meth:`LineCache.apply` has these rules inlined: change both."""
        if kind == COUNTER:
            total = cell[0] + value * weight  # type: ignore[operator]
            if total - total != 0.0:  # inf or nan
                return False
            cell[0] = total
        elif kind == GAUGE:
            if delta:
                moved = cell[1] + value
                level = moved if cell[0] is None else cell[0] + moved
                if level - level != 0.0:
                    return False
                cell[1] = moved
            else:
                cell[0] = value
                cell[1] = 0.0
        elif kind == TIMER or kind == HISTOGRAM:
            if not (-DISTRIBUTION_LIMIT <= value <= DISTRIBUTION_LIMIT  # type: ignore[operator]
                    and weight <= DISTRIBUTION_LIMIT):
                return False
            cell.add(value, weight, self.exact_limit, self.accuracy)
        elif kind == SET:
            cell[text_member_hash(value)] = None  # type: ignore[arg-type]
        elif kind == TRACE:
            total = cell[0] + weight
            if total - total != 0.0:
                return False
            cell[0] = total
        return True

    def fold(self, key: SeriesKey) -> None:
        """Fold a distribution whose ``values`` grew past ``timer_exact_samples`` into its
        sketch (the line cache calls this; :meth:`update` checks by itself)."""
        cell = self._table.series.get(key)
        if isinstance(cell, Distribution):
            cell.fold(self.accuracy)

    def swap(self) -> IntervalTable:
        """Hand back the finished interval's table and start a fresh one (O(1)). The daemon
        has the pipeline publish its receive counts just before, under the same lock."""
        finished = self._table
        self._table = IntervalTable()
        self.epoch += 1
        # Until finish says exactly, the finished table's new gauges and traces may all be
        # carried: count them, so that a burst straddling the flush cannot pass max_series.
        self._carried += finished.carryable
        return finished

    def series_count(self) -> int:
        """Series in the current interval's table."""
        return len(self._table.series)

    def series_held(self) -> int:
        """Series held now, this interval's and the carried ones: what ``max_series`` limits."""
        table = self._table
        return len(table.series) + self._carried - table.carried_again

    def series_levels(self) -> dict[str, float]:
        """The self-metric gauges of the series table (read after a flush)."""
        return {"series.held": float(self.series_held()), "series.carried": float(self._carried),
                "series.limit": float(self.max_series)}

    # -- flushing (main thread, without the ingest lock) -----------------------------------
    def finish(self, table: IntervalTable, seconds: float) -> list[SeriesStats]:
        """The statistics of a finished table, sorted by series, with the carried gauges (and
        cumulative traces) that had no sample in it. Updates the carried state and frees the
        table's samples. ``seconds`` is the interval's real length (counter rates).

        In three parts, so that ``pystatsd.forked_snapshot`` can run the middle one in a
        forked child and the two with effects outside the manager in the daemon."""
        self.start_finish(len(table.series))
        out, non_finite = self.finish_table(table, seconds)
        self.report_non_finite(non_finite)
        return out

    def start_finish(self, table_size: int) -> None:
        """What a flush does before finishing a table of ``table_size`` series (memory)."""
        self._after_burst(table_size)

    def report_non_finite(self, count: int) -> None:
        """Count and log the series :meth:`finish_table` left out as non-finite."""
        if count:
            self._dropped_non_finite(count)

    def finish_table(self, table: IntervalTable, seconds: float,
                     pace: bool = True) -> tuple[list[SeriesStats], int]:
        """:meth:`finish` but for its first and last steps: the series, and how many were left
        out as non-finite. Touches nothing but the table and the carried state (and
        :attr:`memory_generation` when it shrinks that). ``pace`` False: never pause (a forked
        child, which shares no GIL with the receive thread)."""
        out: list[SeriesStats] = []
        seconds = seconds if seconds > 0 else 1.0
        gauges = self._gauges
        traces = self._traces
        # Read once: a reload may change them (under the ingest lock) while this runs.
        percentiles, accuracy = self.percentiles, self.accuracy
        cumulative, idle_expiry = self.trace_cumulative, self.idle_expiry
        keep_partials = self.keep_partials
        if keep_partials:  # the global tier's sketches: protobuf (~4 MB) loaded only for it
            from pystatsd.global_tier.partial_state import cell_partial
        partial = None
        etsy = ETSY_TIMER_STATS in self.extra_stats
        extra: dict[str, float] | None = None
        buckets = self.histogram_buckets
        clock = time.perf_counter if pace else _never_late
        slice_end = clock() + SNAPSHOT_SLICE
        non_finite = 0
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
                if value - value != 0.0:  # deltas on a carried value past ±1.8e308: undone
                    non_finite += 1
                    value = base
                if carried is None:
                    gauges[key] = [value, 0]
                else:  # in place: one GC-tracked list less made and freed per gauge and flush
                    carried[0] = value
                    carried[1] = 0
                stats = {"value": value}
            elif kind == TIMER or kind == HISTOGRAM:
                if etsy:
                    stats, extra = cell.stats_with_etsy(percentiles, accuracy)
                    if buckets and (bounds := buckets.bounds(name)):  # Etsy's `histogram`
                        extra.update(cell.etsy_bins([bound for _, bound in bounds]))
                else:
                    stats = cell.stats(percentiles, accuracy)
                if buckets:
                    buckets.add_to(stats, name, cell)
                if keep_partials:  # read before the samples are freed
                    partial = cell_partial(kind, cell, 0.0)
                cell.release()
            elif kind == SET:
                stats = {"count": float(len(cell))}
                if keep_partials:
                    partial = cell_partial(kind, cell, 0.0, self.set_member_limit)
                cell.clear()
            else:  # trace
                count = cell[0]
                if cumulative:
                    carried = traces.get(key)
                    count += carried[0] if carried is not None else 0.0
                    traces[key] = [count, 0]
                stats = {"count": count}
            if keep_partials and kind != TIMER and kind != HISTOGRAM and kind != SET:
                partial = cell_partial(kind, cell, stats.get("value", 0.0))
            if extra is None:
                if _all_finite(stats):
                    out.append(SeriesStats(name, kind, tags, stats, partial=partial))
                else:
                    non_finite += 1
            else:
                if _all_finite(stats) and _all_finite(extra):
                    out.append(ExtendedSeriesStats(name, kind, tags, stats, partial=partial,
                                                   extra_stats=extra))
                else:
                    non_finite += 1
                extra = None
        for carried_state, stat_name in ((gauges, "value"), (traces, "count")):
            before = len(carried_state)
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
                    carried_partial = ({"value": entry[0], "carried": True}
                                       if keep_partials and key[1] == GAUGE else None)
                    out.append(SeriesStats(key[0], key[1], key[2], {stat_name: entry[0]},
                                           partial=carried_partial))
            if before >= SHRINK_AFTER and len(carried_state) <= before // 2:
                self._shrink(carried_state)
        if not cumulative:
            traces.clear()
        self._carried = len(self._gauges) + len(self._traces)
        for ((name, kind, tags), second), cell in table.stamped.items():
            stats, extra = _stamped_stats(kind, cell, seconds, percentiles, accuracy, etsy)
            if extra is None and _all_finite(stats):
                out.append(SeriesStats(name, kind, tags, stats, second))
            elif extra is not None and _all_finite(stats) and _all_finite(extra):
                out.append(ExtendedSeriesStats(name, kind, tags, stats, second,
                                               extra_stats=extra))
            else:
                non_finite += 1
        table.stamped.clear()
        out.sort(key=_series_order)
        return out, non_finite

    def carried(self) -> tuple[dict[SeriesKey, list[float]], dict[SeriesKey, list[float]]]:
        """The carried state :meth:`finish` reads and writes: gauges and cumulative traces,
        key -> [value, idle flushes] (idle ``inf``: forgotten, deleted at the next finish)."""
        return self._gauges, self._traces

    def adopt_carried(self, gauges: dict[SeriesKey, list[float]],
                      traces: dict[SeriesKey, list[float]],
                      marked_at_fork: set[SeriesKey] | None, shrunk: bool) -> None:
        """Take the carried state a :meth:`finish_table` run elsewhere (a forked child) made
        from this manager's state at the fork. Under the ingest lock. ``marked_at_fork``: None
        if no :meth:`forget` ran since the fork, else the gauges already forgotten at the fork
        (that finish saw to them); gauges forgotten since stay forgotten. ``shrunk``: that run
        shrank a carried table (the burst's memory is then released as after one here)."""
        if marked_at_fork is not None:
            for key, entry in self._gauges.items():
                if entry[1] == math.inf and key in gauges and key not in marked_at_fork:
                    gauges[key] = [0.0, math.inf]
        self._gauges = gauges
        self._traces = traces
        self._carried = len(gauges) + len(traces)
        if shrunk:
            self._burst_gone()

    def _after_burst(self, table_size: int) -> None:
        """At the start of a flush: release what the end of the last burst freed, and see
        whether this table ends one."""
        if self._release_due:
            self._release_due = False
            if _malloc_trim is not None:
                _malloc_trim(0)  # ctypes lets go of the GIL meanwhile
        if self._last_table_size >= SHRINK_AFTER and table_size <= self._last_table_size // 2:
            self._burst_gone()
        self._last_table_size = table_size

    def _burst_gone(self) -> None:
        self.memory_generation += 1
        self._release_due = True

    def _shrink(self, carried_state: dict[SeriesKey, list[float]]) -> None:
        """Replace a carried table by a copy sized for what is left. The entries (lists) are
        shared, so a mark :meth:`forget` makes meanwhile is kept; the attribute is swapped in
        one store, which the receive thread sees whole."""
        if carried_state is self._gauges:
            self._gauges = dict(carried_state)
        else:
            self._traces = dict(carried_state)
        self._burst_gone()

    def _dropped_non_finite(self, count: int) -> None:
        """What :meth:`update`'s rules cannot rule out alone (a rate over a 1 ns interval, a
        stddev of extreme weights, deltas on a carried gauge) is never emitted: counted as
        ``flush.non_finite``, logged once per flush."""
        self.stats.incr("flush.non_finite", count)
        log.warning("%d series had a non-finite statistic this interval and were not flushed "
                    "(a gauge kept its previous value)", count)

    # -- the admin console's view (under the ingest lock) -------------------------------
    def current_series(self) -> dict[SeriesKey, Any]:
        """The current interval's cells, live (a receive worker's view for the console)."""
        return self._table.series

    def current(self, kind: str, series: dict[SeriesKey, Any] | None = None,
                ) -> dict[SeriesKey, Any]:
        """The current interval's value of every series of type ``kind``: a counter's sum, a
        gauge's value (carried ones included), a distribution's kept samples, a set's members.
        ``series``: cells to show instead of this table's (the receive workers' merged ones),
        with this manager's carried gauges."""
        if series is None:
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
        if kind == SET:  # the members are gone: their hashes stand for them
            return {key: sorted(f"{member & 0xFFFFFFFFFFFFFFFF:016x}" for member in cell)
                    for key, cell in cells.items()}
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


class HistogramBuckets:
    """``histogram_buckets``: per name pattern, the ``le`` bounds whose cumulative counts a
    timer's or histogram's statistics include (``le_0_5``, ..., ``le_inf``); the first entry
    whose glob matches the name wins. Decided once per name."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        from pystatsd.mapping import glob_pattern

        self._entries = [(glob_pattern(entry["match"]),
                          sorted(float(b) for b in entry["buckets"])) for entry in entries]
        self._by_name: dict[str, list[tuple[str, float]] | None] = {}

    def __bool__(self) -> bool:
        return bool(self._entries)

    def add_to(self, stats: dict[str, float], name: str, cell: Distribution) -> None:
        bounds = self.bounds(name)
        if bounds:
            for (key, _), count in zip(bounds, cell.buckets([b for _, b in bounds]),
                                       strict=True):
                stats[key] = count
            stats["le_inf"] = stats["count"]

    def bounds(self, name: str) -> list[tuple[str, float]] | None:
        """The (stat key, bound) pairs of the first entry matching ``name``, sorted; None."""
        bounds = self._by_name.get(name, _UNKNOWN)
        if bounds is _UNKNOWN:
            if len(self._by_name) >= 100_000:
                self._by_name.clear()
            bounds = self._by_name[name] = next(
                ([(bucket_key(b), b) for b in found] for pattern, found in self._entries
                 if pattern.fullmatch(name)), None)
        result: list[tuple[str, float]] | None = bounds
        return result


_UNKNOWN: Any = object()


def bucket_key(bound: float) -> str:
    """The statistic of a bucket bound: ``le_0_005`` for 0.005, ``le_10`` for 10 (the dot
    becomes an underscore, as in percentile keys), ``le_m1`` for -1."""
    return "le_" + f"{bound:g}".replace(".", "_").replace("-", "m")


def _stamped_stats(kind: str, cell: Any, seconds: float, percentiles: Percentiles,
                   accuracy: float, etsy: bool) -> tuple[dict[str, float], dict[str, float] | None]:
    """The statistics of a passed-through cell, and its extra ones (``etsy``: Etsy's timer
    statistics): those of an interval's series, with no state carried (a gauge of deltas
    alone starts from 0; a trace counts only its own events)."""
    if kind == COUNTER:
        return {"count": cell[0], "rate": cell[0] / seconds}, None
    if kind == GAUGE:
        base, delta = cell
        return {"value": (0.0 if base is None else base) + delta}, None
    if kind == TIMER or kind == HISTOGRAM:
        extra: dict[str, float] | None = None
        if etsy:
            stats, extra = cell.stats_with_etsy(percentiles, accuracy)
        else:
            stats = cell.stats(percentiles, accuracy)
        cell.release()
        return stats, extra
    if kind == SET:
        return {"count": float(len(cell))}, None
    return {"count": cell[0]}, None


# -- the fast path ----------------------------------------------------------------------------
CACHE_ENTRIES = 100_000
CACHE_BYTES = 32 << 20
"""Line shapes remembered by the :class:`LineCache`: at most this many, and about this much
memory (counting each shape's bytes plus ~300 of overhead; DogStatsD tags can make a line
long). When full the cache is emptied and refills from the traffic, which is cheap and needs no
bookkeeping per hit."""
COUNTER_LINES = 50_000
COUNTER_LINE_BYTES = 256
"""Whole counter lines remembered: at most this many, each at most this long."""
_ENTRY_OVERHEAD = 300

# Entry kinds: the arm of :meth:`PythonLineCache.apply` (and of its compiled twin, which
# checks that its own numbers are these) that replays a shape's lines.
_COUNTER, _GAUGE, _DISTRIBUTION, _SET, _OTHER, _TIMED_GAUGE = range(6)


def update_arm(kind: str, rate: float, absolute_gauges: bool, timed_gauges: bool) -> int:
    """Which arm replays the lines of a shape the slow path decoded to one sample of type
    ``kind`` at sample rate ``rate``: both line caches' ``remember`` ask this. Counters, sets,
    distributions at unit rate and gauges have their own; a gauge of a manager with timed
    gauge cells (``timed_gauges``: a receive worker's) also notes when it changed. Gauges of
    ``gauge_sign: absolute`` listeners (``absolute_gauges``: a signed value is the value, the
    decoder's ``delta`` is always False) and everything else go through
    :meth:`MetricMgr.update`."""
    if kind == COUNTER:
        return _COUNTER
    if kind == GAUGE:
        if absolute_gauges:
            return _OTHER
        return _TIMED_GAUGE if timed_gauges else _GAUGE
    if kind == SET:
        return _SET
    if (kind == TIMER or kind == HISTOGRAM) and 1.0 / rate == 1.0:
        return _DISTRIBUTION
    return _OTHER


def note_gauge_change(record: list[Any], now: int, delta: float | None) -> None:
    """Note on a timed gauge cell's ``record`` (``[at, ms, delta, ms, delta, ...]``, see
    ``pystatsd.workers.gauge_order``) one change applied to its cell at millisecond ``now``:
    an absolute value (``delta`` None) sets ``at`` and drops the deltas before it; a delta
    joins the step of its millisecond, or starts one. :meth:`MetricMgr.update` of a timed
    manager and the timed gauge arm of both line caches call this (the compiled one in C)."""
    if delta is None:
        record[0] = now
        if len(record) > 1:
            del record[1:]
    elif len(record) > 1 and record[-2] == now:
        record[-1] += delta
    else:
        record.append(now)
        record.append(delta)

_NUMBER_BYTES = b"0123456789.eE+-"
"""A value made only of these bytes that ``float()`` accepts is exactly what the decoder's
number grammar (``pystatsd.decoders.limits``) accepts (``float`` alone would also take
``1_000``, `` 1``, ``nan``, ``inf``)."""

_PLUS, _MINUS = ord("+"), ord("-")
_NO_ENTRIES: dict[bytes, list[Any]] = {}


class PythonLineCache:
    """Statsd lines whose *shape* (the line's bytes minus its value) was decoded before,
    applied straight to their series' cells.

    Most statsd traffic repeats the same few thousand ``name|type|rate|tags`` shapes with
    different values. An entry, keyed by ``(tail, name)``, holds what the decoder and tagger
    made of a line of that shape (series key, sample weight) and the series' cell, bound once
    per interval (by :attr:`MetricMgr.epoch`), so a line costs no series-key hashing. Counter
    lines with a short increment (``name:1|c``, the commonest line there is) are also
    remembered whole, with their increment, and cost one dict lookup.

    Only what the slow path decided for the same bytes is ever replayed: the cache refuses any
    line it does not know or whose value is out of the ordinary (not a plain number, too
    long, an empty or non-UTF-8 set member), and the pipeline takes that line through the
    decoders, the tagger and :meth:`MetricMgr.add`. One instance per pipeline: its entries
    hold series keys with the pipeline's agent tags.

    This class is the reference and the fallback: :data:`LineCache` is the compiled twin
    (``pystatsd/_linecache.pyx``) when it is built, which must behave exactly as this one."""

    def __init__(self, manager: MetricMgr, absolute_gauges: bool = False) -> None:
        self._manager = manager
        self.absolute_gauges = absolute_gauges
        """The lines it takes come from ``gauge_sign: absolute`` listeners: a signed gauge
        value is the value, not a change (replayed by :meth:`MetricMgr.update`)."""
        self.hits = 0
        """Lines applied: each one sample decoded and aggregated. The pipeline reads and
        zeroes it when it publishes its counts."""
        self.lines = 0
        """Lines of the payloads :meth:`apply_payloads` took whole (``received.lines``; read
        and zeroed with ``hits``)."""
        self.position = 0
        """The payload :meth:`apply_payloads` is at: after it raised, the one that raised."""
        self.unplaced = 0
        """Lines decoded but dropped because their series would pass ``max_series`` or their
        value would overflow an aggregate (the manager counts them as ``too_many_series`` or
        ``overflow``)."""
        self._shapes: dict[bytes, dict[bytes, list[Any]]] = {}
        self._size = 0
        self.bytes = 0
        """What the shapes are estimated to take (bounded by ``CACHE_BYTES``)."""
        self._counter_lines: dict[bytes, tuple[list[Any], float]] = {}
        """Whole counter lines with a short value -> (their shape's entry, the increment)."""
        self._memory_generation = manager.memory_generation

    def __len__(self) -> int:
        """Line shapes known now."""
        return self._size

    def clear(self) -> None:
        self._shapes = {}
        self._size = 0
        self.bytes = 0
        self._counter_lines = {}

    def apply(self, lines: Iterable[bytes]) -> bytes | None:
        """Apply ``lines`` in order until one this cache cannot take, and return that line for
        the slow path (the caller then goes on with the lines after it); None if all were
        taken. Until it returns, whether a line is taken depends on its bytes alone."""
        manager = self._manager
        if manager.memory_generation != self._memory_generation:  # a burst is gone: let go
            self._memory_generation = manager.memory_generation
            self.clear()
        epoch = manager.epoch
        exact_limit = manager.exact_limit
        clock = manager.gauge_clock
        now = 0
        if clock is not None:  # timed gauge cells: this payload's millisecond (reads_clock)
            if manager.reads_clock:
                clock[0] = time.monotonic_ns() // 1_000_000
            now = clock[0]
        shapes = self._shapes
        counter_lines = self._counter_lines
        hits = 0
        for line in lines:
            known = counter_lines.get(line)
            if known is not None:  # a counter line seen before, bytes for bytes: add, done
                shape = known[0]
                if shape[1] == epoch:
                    total = shape[2][0] + known[1]
                    if total - total == 0.0:  # else an overflow: rejected below
                        shape[2][0] = total
                        hits += 1
                        continue
            name, _, rest = line.partition(b":")
            value, _, tail = rest.partition(b"|")
            entry = shapes.get(tail, _NO_ENTRIES).get(name)
            if entry is None:
                break
            kind, bound_epoch, cell, weight, key = entry
            if kind == _SET:
                if not value:
                    break
                if not value.isascii():  # strict UTF-8, as the decoder takes it
                    try:
                        value.decode()
                    except UnicodeDecodeError:
                        break
                member = member_hash(value)
            else:
                if value.isdigit():  # the usual integer: nothing more to check
                    if len(value) > 300:  # float() would overflow to inf: let the decoder say so
                        break
                    number = float(value)
                else:
                    if value.translate(None, _NUMBER_BYTES):
                        break
                    try:
                        number = float(value)
                    except ValueError:
                        break
                    if number - number != 0.0:  # inf or nan, from an exponent
                        break
            if bound_epoch != epoch:
                cell = manager.cell(key)
                if cell is None:  # too many series: rejected and counted by the manager
                    self.unplaced += 1
                    continue
                if kind == _DISTRIBUTION:
                    cell = cell.values
                entry[1] = epoch
                entry[2] = cell
            # MetricMgr.update, inlined (the same rules; a test compares the cells). A value
            # that would overflow is rejected as MetricMgr.add does: the line is still taken,
            # so whether a line is taken depends on its bytes alone.
            if kind == _COUNTER:
                total = cell[0] + number * weight
                if total - total != 0.0:
                    manager.overflow(key, number, weight)
                    self.unplaced += 1
                    continue
                cell[0] = total
                if len(value) <= 3 and len(line) <= COUNTER_LINE_BYTES:
                    # Small increments repeat (mostly :1): remember the whole line.
                    if len(counter_lines) >= COUNTER_LINES:
                        counter_lines.clear()
                    counter_lines[line] = (entry, number * weight)
            elif kind == _DISTRIBUTION:  # unit rate only: Distribution.add's first branch
                if number > DISTRIBUTION_LIMIT or number < -DISTRIBUTION_LIMIT:
                    manager.overflow(key, number, weight)
                    self.unplaced += 1
                    epoch = manager.epoch  # the cell may have left the table
                    continue
                append_sample(cell, number, exact_limit + 1)  # float or double: see there
                if len(cell) > exact_limit:
                    manager.fold(key)
            elif kind == _GAUGE or kind == _TIMED_GAUGE:  # a sign makes a delta, as the
                # decoder decides; a timed cell (a receive worker's) also notes when
                if value[0] == _PLUS or value[0] == _MINUS:
                    moved = cell[1] + number
                    level = moved if cell[0] is None else cell[0] + moved
                    if level - level != 0.0:
                        manager.overflow(key, number, weight)
                        self.unplaced += 1
                        continue
                    cell[1] = moved
                    if kind == _TIMED_GAUGE:
                        note_gauge_change(cell.record, now, number)
                else:
                    cell[0] = number
                    cell[1] = 0.0
                    if kind == _TIMED_GAUGE:
                        note_gauge_change(cell.record, now, None)
            elif kind == _SET:
                cell[member] = None
            elif not manager.update(key[1], cell, number, weight, False):
                manager.overflow(key, number, weight)
                self.unplaced += 1
                epoch = manager.epoch
                continue
            hits += 1
        else:
            self.hits += hits
            return None
        self.hits += hits
        return line  # the first line not taken

    def apply_payload(self, payload: bytes) -> tuple[int, bytes | None]:
        """:meth:`apply` to the lines of ``payload`` (split at ``\\n`` as the pipeline splits
        it: no empty line after a last newline): how many were taken before the first not
        taken, and that line; ``(number of lines, None)`` if all were. The compiled twin walks
        the payload's bytes and makes no line object unless one is not taken."""
        lines = payload.split(b"\n")
        if not lines[-1]:
            lines.pop()
        missed = self.apply(lines)
        return (len(lines), None) if missed is None else (lines.index(missed), missed)

    def apply_payloads(self, payloads: list[bytes], start: int,
                       unusual_starts: bytes) -> tuple[int, int, bytes | None]:
        """:meth:`apply_payload` to ``payloads[start:]`` in order while each is taken whole,
        adding their lines to :attr:`lines`: one call for a batch of datagrams (the native
        receive's, pystatsd.ingest.Pipeline.ingest_batch). Stops at the first payload that is
        empty or starts with a byte of ``unusual_starts`` (untouched: ``(index, 0, None)``) or
        has a line not taken (``(index, lines taken before it, that line)``, as
        :meth:`apply_payload` says); ``(len(payloads), 0, None)`` if all were taken.
        :attr:`position` is the payload under way, the one that raised if one did."""
        index = start
        for index in range(start, len(payloads)):
            self.position = index
            payload = payloads[index]
            if not payload or payload[0] in unusual_starts:
                return index, 0, None
            taken, missed = self.apply_payload(payload)
            if missed is not None:
                return index, taken, missed
            self.lines += taken
        return len(payloads), 0, None

    def remember(self, line: bytes, sample: Sample) -> None:
        """Cache the shape of ``line`` with what the slow path made of it: ``sample``, the one
        sample it decoded to, tagged, without a client timestamp. Sound because decoding and
        tagging are pure functions of the line: another line with the same name and tail bytes
        decodes the same but for the value, which :meth:`apply` parses and checks with the
        decoder's own grammar."""
        name, _, rest = line.partition(b":")
        _, _, tail = rest.partition(b"|")
        kind = sample.type
        code = update_arm(kind, sample.rate, self.absolute_gauges,
                          self._manager.gauge_clock is not None)
        weight = 1.0 / sample.rate
        if self._size >= CACHE_ENTRIES or self.bytes >= CACHE_BYTES:
            self.clear()
        by_name = self._shapes.setdefault(tail, {})
        if name not in by_name:
            self._size += 1
            self.bytes += len(name) + len(tail) + _ENTRY_OVERHEAD
        by_name[name] = [code, -1, None, weight, (sample.name, kind, sample.tags)]


# -- which line cache runs -------------------------------------------------------------------
LINE_CACHE_ENV = "PYSTATSD_LINE_CACHE"
"""``python`` runs the pure-Python line cache even where the compiled one is built (for tests,
and for an operator who suspects the compiled one); ``compiled`` refuses to start without the
compiled one (the packages' tests); unset or ``auto``: the compiled one if it imports."""


def _select_line_cache() -> tuple[type[PythonLineCache], str]:
    """The line cache class the pipeline uses, and a phrase saying which and why."""
    wanted = os.environ.get(LINE_CACHE_ENV, "auto").strip().lower() or "auto"
    if wanted == "python":
        return PythonLineCache, f"python ({LINE_CACHE_ENV}=python)"
    if wanted not in ("auto", "compiled"):
        raise RuntimeError(f"{LINE_CACHE_ENV}={wanted!r}: expected python, compiled or auto")
    try:
        from pystatsd._linecache import LineCache as CompiledLineCache
    except ImportError as exc:
        if wanted == "compiled":
            raise RuntimeError(f"{LINE_CACHE_ENV}=compiled but the compiled line cache does "
                               f"not import: {exc}") from exc
        return PythonLineCache, f"python (the compiled line cache does not import: {exc})"
    return CompiledLineCache, "compiled"


if TYPE_CHECKING:
    LineCache = PythonLineCache
    LINE_CACHE: str
    new_set_cell = dict
else:
    LineCache, LINE_CACHE = _select_line_cache()
    """The line cache the pipeline makes: the compiled one when it is built, else
    :class:`PythonLineCache`; :data:`LINE_CACHE` says which (the daemon logs it at start and
    ``pystatsd --version`` prints it)."""

    if LineCache is PythonLineCache:
        new_set_cell = dict
    else:
        from pystatsd._linecache import MemberSet as new_set_cell
    """What a new set cell is (:func:`new_cell`): the compiled ``MemberSet`` with the
    compiled line cache, the ``dict`` of the pure-Python reference with it."""
