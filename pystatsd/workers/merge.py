"""A receive worker's interval as partials, and the exact merge of every worker's into the one
table the daemon finishes.

A worker sends ``encode_table``'s bytes at each flush: its table's cells as the partials of
``pystatsd.global_tier.partial_state`` (the global tier's mergeable state, with the ordered
gauge form), the interval's events and its self-counters, in one ``marshal`` frame (events as
a pickle inside: they are our own objects, between our own processes). The parent merges
them with ``SeriesMerge``, the same merge the global tier uses, and turns each merged series
back into a cell (``SeriesMerge.cell``): the daemon then finishes one table, with the carried
gauges it alone holds, exactly as with one process."""

from __future__ import annotations

import gc
import marshal
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pystatsd.aggregation import IntervalTable, MetricMgr, new_cell, new_set_cell
from pystatsd.global_tier.partial_state import SeriesMerge, cell_partial, ordered_gauge_partial
from pystatsd.sample import GAUGE, HISTOGRAM, SET, TIMER, TRACE
from pystatsd.selfstats import SelfStats
from pystatsd.workers.gauge_order import TimedGauge


def cell_to_partial(kind: str, cell: Any, accuracy: float) -> dict[str, Any]:
    """The partial of an unfinished cell."""
    if kind == GAUGE:  # timed (arrival order kept) unless a stamped sample's
        return cell.partial() if type(cell) is TimedGauge else ordered_gauge_partial(cell)
    if (kind == TIMER or kind == HISTOGRAM) and cell.sketch is not None:
        cell.fold(accuracy)  # cell_partial wants the kept samples inside the sketch
    return cell_partial(kind, cell, 0.0)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Partials and merged cells are acyclic, and many: with the collector on, making them
    set off collections that walked them all again (measured: half the merge's time)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def encode_table(table: IntervalTable, counts: dict[str, int], accuracy: float) -> bytes:
    """One worker's interval, for :meth:`TableMerge.add_encoded`."""
    with collector_paused():
        series = [(key, cell_to_partial(key[1], cell, accuracy))
                  for key, cell in table.series.items()]
        stamped = [(key, cell_to_partial(key[0][1], cell, accuracy))
                   for key, cell in table.stamped.items()]
        events = pickle.dumps(table.events, pickle.HIGHEST_PROTOCOL) if table.events else b""
        return marshal.dumps((series, stamped, events, counts))


_NO_SKETCH_ACCURACY = 0.01
"""What ``merged_view`` passes as a sketch's accuracy: with no sample limit it makes none."""


def encode_view(series: dict[Any, Any], kinds: tuple[str, ...]) -> bytes:
    """The live cells of ``kinds`` as partials, for :func:`merged_view`, changing none of them:
    a distribution gives only its kept samples (what ``MetricMgr.current`` shows), so one
    already folded into its sketch is neither folded again nor copied."""
    parts = []
    with collector_paused():
        for key, cell in series.items():
            kind = key[1]
            if kind not in kinds:
                continue
            if kind == TIMER or kind == HISTOGRAM:
                parts.append((key, {"values": cell.values.tolist(),
                                    "weighted": [list(pair) for pair in cell.weighted]}))
            else:
                parts.append((key, cell_to_partial(kind, cell, 0.0)))
        return marshal.dumps(parts)


def merged_view(encoded: list[bytes]) -> dict[Any, Any]:
    """Cells of the current interval merged from every :func:`encode_view` answer, as the
    flush merges them (``SeriesMerge``; no sample limit: the view folds nothing)."""
    merges: dict[Any, SeriesMerge] = {}
    with collector_paused():
        for data in encoded:
            for key, partial in marshal.loads(data):
                merge = merges.get(key)
                if merge is None:
                    merge = merges[key] = SeriesMerge(key[1])
                merge.add(partial, 0.0, "", sys.maxsize, _NO_SKETCH_ACCURACY)
        return {key: merge.cell() for key, merge in merges.items()}


class TableMerge:
    """The partials of one interval from every worker (and the parent's own table)."""

    def __init__(self, manager: MetricMgr) -> None:
        self._exact_limit = manager.exact_limit
        self._accuracy = manager.accuracy
        self.series: dict[Any, SeriesMerge] = {}
        self.stamped: dict[Any, SeriesMerge] = {}
        self.events: list[Any] = []

    def add_table(self, table: IntervalTable) -> None:
        """The parent's own cells (Unix-socket listeners, a hot restart's hand-over)."""
        accuracy = self._accuracy
        with collector_paused():
            self._add(self.series, [(key, cell_to_partial(key[1], cell, accuracy))
                                    for key, cell in table.series.items()], 1)
            self._add(self.stamped, [(key, cell_to_partial(key[0][1], cell, accuracy))
                                     for key, cell in table.stamped.items()], 0)
        self.events.extend(table.events)

    def add_encoded(self, data: bytes) -> dict[str, int]:
        """One worker's :func:`encode_table`; its self-counters are returned."""
        with collector_paused():
            series, stamped, events, counts = marshal.loads(data)
            self._add(self.series, series, 1)
            self._add(self.stamped, stamped, 0)
        if events:
            self.events.extend(pickle.loads(events))  # a worker of ours, never client bytes
        return dict(counts)

    def _add(self, into: dict[Any, SeriesMerge], parts: list[Any], kind_at: int) -> None:
        exact_limit, accuracy = self._exact_limit, self._accuracy
        for key, partial in parts:
            merge = into.get(key)
            if merge is None:
                kind = key[1] if kind_at else key[0][1]
                merge = into[key] = SeriesMerge(kind, new_set_cell)
            merge.add(partial, 0.0, "", exact_limit, accuracy)

    def table(self, manager: MetricMgr, stats: SelfStats) -> IntervalTable:
        """The merged interval as one table. ``max_series`` holds for the merged table as for
        one process: each worker enforced it on its own share, the union may pass it; series
        past it (new ones, not carried) are dropped and counted as ``too_many_series``."""
        with collector_paused():
            return self._table(manager, stats)

    def _table(self, manager: MetricMgr, stats: SelfStats) -> IntervalTable:
        table = IntervalTable()
        gauges, traces = manager.carried()
        room = manager.max_series - len(gauges) - len(traces)
        dropped = 0
        for key, merge in self.series.items():
            kind = key[1]
            carried = (kind == GAUGE and key in gauges) or (kind == TRACE and key in traces)
            if not carried:
                if room <= 0:
                    dropped += 1
                    continue
                room -= 1
            table.series[key] = _own_cell(kind, merge.cell())
        for stamped_key, merge in self.stamped.items():
            table.stamped[stamped_key] = _own_cell(stamped_key[0][1], merge.cell())
        table.events = self.events
        if dropped:
            stats.reject("too_many_series", f"{dropped} series of the merged workers' tables "
                         "past max_series", "")
            stats.incr("rejected.too_many_series", dropped - 1)
        return table


def _own_cell(kind: str, cell: Any) -> Any:
    """A merged cell as this process makes them: a set's hashes in its compact cell (the
    merge collects them in a dict, ~10 times the bytes of the compiled ``MemberSet``)."""
    if kind != SET:
        return cell
    own = new_cell(SET)
    if type(own) is type(cell):
        return cell
    own.update(cell)
    return own
