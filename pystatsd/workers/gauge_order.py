"""Gauge cells that remember when they changed, so that the receive workers' partial tables
merge in arrival order (``SeriesMerge``'s ordered gauge partial).

Etsy's rule for one gauge is sequential: an absolute value replaces everything before it and
each later ``+n``/``-n`` moves it. With several workers one gauge's lines can land in several
processes; the merge needs, per worker, when its last absolute value was set and when each
delta since came, on one clock. ``CLOCK_MONOTONIC`` is system-wide, so every worker reads the
same clock; a worker's manager (``reads_clock``) reads it in milliseconds when a line cache
begins a payload (the compiled one in C) and when the slow path changes a gauge (not when the
kernel received it), and deltas within one millisecond are kept as one step. A
worker's own order is exact; across workers, lines less than a millisecond apart (or
reordered by one worker's backlog) are ordered as the workers applied them.

A :class:`TimedGauge` is a plain gauge cell (``[base or None, moved]``: everything that reads
gauge cells reads it unchanged) with a ``record`` beside it. Whoever changes the cell notes the
change on the record: :meth:`TimedMetricMgr.update` (the slow path) and both line caches' timed
gauge arm (``aggregation.update_arm``; the compiled one in C, at the cost of a plain gauge line
plus a store or an append), all by ``aggregation.note_gauge_change``'s rules."""

from __future__ import annotations

import time
from typing import Any

from pystatsd.aggregation import MetricMgr, SeriesKey, note_gauge_change
from pystatsd.sample import GAUGE

_now = [0]
"""The millisecond of the payload being applied, read by every gauge change in it (a clock
read per line cost more than the rest of the line's bookkeeping): set by whoever delivers the
payload (:func:`stamp`), or for a manager that ``reads_clock`` (a receive worker's) by the line
cache as it begins the payload and by :meth:`TimedMetricMgr.update` on the slow path.
:attr:`TimedMetricMgr.gauge_clock`."""


def stamp() -> None:
    """Called by whoever delivers a payload to a :class:`TimedMetricMgr` that does not
    ``reads_clock``, before it."""
    _now[0] = time.monotonic_ns() // 1_000_000


class TimedGauge(list):  # type: ignore[type-arg]
    """``[base or None, moved]`` and ``record``: ``[at, ms, delta, ms, delta, ...]``, ``at``
    the millisecond ``base`` was set, then the deltas since by millisecond (pickled with the
    cell for a hot restart: a list subclass with slots pickles both)."""

    __slots__ = ("record",)

    def __init__(self, cell: list[Any]) -> None:
        super().__init__(cell)
        self.record: list[Any] = [0, _now[0], cell[1]] if cell[1] else [0]

    def partial(self) -> dict[str, Any]:
        """The ordered gauge partial (``pystatsd.global_tier.partial_state``) of this cell."""
        record, base = self.record, self[0]
        return {"base": base, "moved": self[1], "at": None if base is None else record[0],
                "times": record[1::2], "deltas": record[2::2]}


class TimedMetricMgr(MetricMgr):
    """A :class:`MetricMgr` whose gauge cells are :class:`TimedGauge` (each receive worker's,
    and the parent's when it receives on Unix sockets beside its workers)."""

    gauge_clock = _now

    def cell(self, key: SeriesKey) -> Any:
        cell = super().cell(key)
        if key[1] == GAUGE and type(cell) is list:
            cell = self._table.series[key] = TimedGauge(cell)
        return cell

    def update(self, kind: str, cell: Any, value: float | str, weight: float,
               delta: bool) -> bool:
        if not super().update(kind, cell, value, weight, delta):
            return False
        if kind == GAUGE and type(cell) is TimedGauge:  # not a stamped sample's plain cell
            if self.reads_clock:  # the slow path (JSON, other formats, a line the cache
                # did not take) may come without a line cache's stamp before it
                _now[0] = time.monotonic_ns() // 1_000_000
            note_gauge_change(cell.record, _now[0],
                              value if delta else None)  # type: ignore[arg-type]
        return True
