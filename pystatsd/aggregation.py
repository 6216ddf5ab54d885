"""The metric manager: one interval's aggregates per series, swapped out at each flush, and the
receive fast path that updates them.

A series is ``(name, type, tags)``; tags are sorted, so their order never splits a series.
Each series of the current interval has one mutable *cell* in the :class:`IntervalTable`:

  counter            ``[sum of value / rate]``
  gauge              ``[absolute value or None, sum of +/- deltas since it]``
  timer, histogram   :class:`~pystatsd.distribution.Distribution`
  set                ``dict`` of members -> None (a ``dict`` of str keys and None values is
                     not tracked by the cyclic GC, a ``set`` always is: a full collection
                     walked every member of every set, ~80 ns each, holding the GIL)
  trace              ``[events, each weighted 1 / rate]``

The update rules are :meth:`MetricMgr.update`. :class:`LineCache`, the fast path the ingest
pipeline hands its statsd lines to, applies the same rules inline (a call per line costs more
than the update itself); both live here so that a change to one is made beside the other, and a
test feeds the same values both ways and compares the cells. Nothing here calls back into
ingest: the pipeline decodes and tags what the cache does not know and tells it with
:meth:`LineCache.remember`.

State carried across intervals (gauge values, cumulative trace counts, idle counts) lives in
the manager, not the table, and only :meth:`MetricMgr.finish` touches it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from pystatsd.distribution import Distribution, Percentiles, percentile_key
from pystatsd.global_tier.partial_state import cell_partial
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample, Tags
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import SeriesStats

Config = dict[str, Any]
SeriesKey = tuple[str, str, Tags]
"""(name, type, tags): what makes two samples the same series."""

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
    into its :class:`~pystatsd.snapshot.SeriesStats`.

    Threading: the daemon serializes :meth:`add`, :meth:`cell` and :meth:`swap` (and the
    :class:`LineCache`) under its ingest lock; :meth:`finish` runs on the main thread without
    it and is the only reader and writer of the carried state."""

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
        # Mergeable state only costs when a forwarder sends it (the Kafka `partials` format).
        self.keep_partials: bool = any(
            isinstance(section, dict) and section.get("format") == "partials"
            for section in config.get("forwarders", {}).values())

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
        and distributions count it; gauges and sets ignore sample rates (as Etsy statsd does).

        :meth:`LineCache.apply` has these rules inlined: change both."""
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
        return finished

    def series_count(self) -> int:
        """Series in the current interval's table (what ``max_series`` limits)."""
        return len(self._table.series)

    # -- flushing (main thread, without the ingest lock) -----------------------------------
    def finish(self, table: IntervalTable, seconds: float) -> list[SeriesStats]:
        """The statistics of a finished table, sorted by series, with the carried gauges (and
        cumulative traces) that had no sample in it. Updates the carried state and frees the
        table's samples. ``seconds`` is the interval's real length (counter rates)."""
        out: list[SeriesStats] = []
        seconds = seconds if seconds > 0 else 1.0
        gauges = self._gauges
        traces = self._traces
        # Read once: a reload may change them (under the ingest lock) while this runs.
        percentiles, accuracy = self.percentiles, self.accuracy
        cumulative, idle_expiry = self.trace_cumulative, self.idle_expiry
        keep_partials = self.keep_partials
        partial = None
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
                if keep_partials:  # read before the samples are freed
                    partial = cell_partial(kind, cell, 0.0)
                cell.release()
            elif kind == SET:
                stats = {"count": float(len(cell))}
                if keep_partials:
                    partial = cell_partial(kind, cell, 0.0)
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
            out.append(SeriesStats(name, kind, tags, stats, partial))
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
                    carried_partial = ({"value": entry[0], "carried": True}
                                       if keep_partials and key[1] == GAUGE else None)
                    out.append(SeriesStats(key[0], key[1], key[2], {stat_name: entry[0]},
                                           carried_partial))
        if not cumulative:
            traces.clear()
        out.sort(key=_series_order)
        return out

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

# Entry kinds.
_COUNTER, _GAUGE, _DISTRIBUTION, _SET, _OTHER = range(5)

_NUMBER_BYTES = b"0123456789.eE+-"
"""A value made only of these bytes that ``float()`` accepts is exactly what the decoder's
number grammar (``pystatsd.decoders.limits``) accepts (``float`` alone would also take
``1_000``, `` 1``, ``nan``, ``inf``)."""

_PLUS, _MINUS = ord("+"), ord("-")
_NO_ENTRIES: dict[bytes, list[Any]] = {}


class LineCache:
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
    hold series keys with the pipeline's agent tags."""

    def __init__(self, manager: MetricMgr) -> None:
        self._manager = manager
        self.hits = 0
        """Lines applied: each one sample decoded and aggregated. The pipeline reads and
        zeroes it when it publishes its counts."""
        self.unplaced = 0
        """Lines decoded but dropped because their series would pass ``max_series`` (the
        manager counts them as ``too_many_series``)."""
        self._shapes: dict[bytes, dict[bytes, list[Any]]] = {}
        self._size = 0
        self.bytes = 0
        """What the shapes are estimated to take (bounded by ``CACHE_BYTES``)."""
        self._counter_lines: dict[bytes, tuple[list[Any], float]] = {}
        """Whole counter lines with a short value -> (their shape's entry, the increment)."""

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
        epoch = manager.epoch
        exact_limit = manager.exact_limit
        shapes = self._shapes
        counter_lines = self._counter_lines
        hits = 0
        for line in lines:
            known = counter_lines.get(line)
            if known is not None:  # a counter line seen before, bytes for bytes: add, done
                shape = known[0]
                if shape[1] == epoch:
                    shape[2][0] += known[1]
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
                try:
                    member = value.decode()
                except UnicodeDecodeError:
                    break
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
            # MetricMgr.update, inlined (the same rules; a test compares the cells).
            if kind == _COUNTER:
                cell[0] += number * weight
                if len(value) <= 3 and len(line) <= COUNTER_LINE_BYTES:
                    # Small increments repeat (mostly :1): remember the whole line.
                    if len(counter_lines) >= COUNTER_LINES:
                        counter_lines.clear()
                    counter_lines[line] = (entry, number * weight)
            elif kind == _DISTRIBUTION:  # unit rate only: Distribution.add's first branch
                cell.append(number)
                if len(cell) > exact_limit:
                    manager.fold(key)
            elif kind == _GAUGE:  # a sign makes a delta, as the decoder decides
                if value[0] == _PLUS or value[0] == _MINUS:
                    cell[1] += number
                else:
                    cell[0] = number
                    cell[1] = 0.0
            elif kind == _SET:
                cell[member] = None
            else:
                manager.update(key[1], cell, number, weight, False)
            hits += 1
        else:
            self.hits += hits
            return None
        self.hits += hits
        return line  # the first line not taken

    def remember(self, line: bytes, sample: Sample) -> None:
        """Cache the shape of ``line`` with what the slow path made of it: ``sample``, the one
        sample it decoded to, tagged, without a client timestamp. Sound because decoding and
        tagging are pure functions of the line: another line with the same name and tail bytes
        decodes the same but for the value, which :meth:`apply` parses and checks with the
        decoder's own grammar."""
        name, _, rest = line.partition(b":")
        _, _, tail = rest.partition(b"|")
        kind = sample.type
        weight = 1.0 / sample.rate
        if kind == COUNTER:
            code = _COUNTER
        elif kind == GAUGE:
            code = _GAUGE
        elif kind == SET:
            code = _SET
        elif (kind == TIMER or kind == HISTOGRAM) and weight == 1.0:
            code = _DISTRIBUTION
        else:
            code = _OTHER
        if self._size >= CACHE_ENTRIES or self.bytes >= CACHE_BYTES:
            self.clear()
        by_name = self._shapes.setdefault(tail, {})
        if name not in by_name:
            self._size += 1
            self.bytes += len(name) + len(tail) + _ENTRY_OVERHEAD
        by_name[name] = [code, -1, None, weight, (sample.name, kind, sample.tags)]
