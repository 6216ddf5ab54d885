"""Gauge cells that remember when they changed, so that the receive workers' partial tables
merge in arrival order (``SeriesMerge``'s ordered gauge partial).

Etsy's rule for one gauge is sequential: an absolute value replaces everything before it and
each later ``+n``/``-n`` moves it. With several workers one gauge's lines can land in several
processes; the merge needs, per worker, when its last absolute value was set and when each
delta since came, on one clock. ``CLOCK_MONOTONIC`` is system-wide, so every worker reads the
same clock; it is read in milliseconds when a line is applied (not when the kernel received
it), and deltas within one millisecond are kept as one step. A worker's own order is exact;
across workers, lines less than a millisecond apart (or reordered by one worker's backlog) are
ordered as the workers applied them.

The fast path (``LineCache``) and ``MetricMgr.update`` write a gauge cell as ``cell[0] =
value; cell[1] = 0.0`` (absolute) or ``cell[1] = moved`` (a delta): a ``list`` subclass sees
both through ``__setitem__`` and costs nothing on the other types."""

from __future__ import annotations

import time
from typing import Any, SupportsIndex

from pystatsd.aggregation import MetricMgr, SeriesKey
from pystatsd.sample import GAUGE

_now = [0]
"""The millisecond the payload being applied arrived: set once per payload by the receiver
(:func:`stamp`), read by every gauge line in it (a clock read per line cost more than the
rest of the line's bookkeeping)."""


def stamp() -> None:
    """Called by whoever delivers a payload to a :class:`TimedMetricMgr`, before it."""
    _now[0] = time.monotonic_ns() // 1_000_000


class TimedGauge(list):  # type: ignore[type-arg]
    """``[base or None, moved]`` plus ``at`` (the millisecond ``base`` was set) and the deltas
    since, by millisecond (``times``, ``deltas``)."""

    __slots__ = ("at", "times", "deltas")

    def __init__(self, cell: list[Any]) -> None:
        super().__init__(cell)
        self.at = 0
        self.times: list[int] = []
        self.deltas: list[float] = []
        if cell[1]:
            self.times.append(_now[0])
            self.deltas.append(cell[1])

    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        # Kept short: it runs for every gauge line a worker takes (twice for an absolute one).
        if index:
            old = self[1]
            if value != old:
                now = _now[0]
                times = self.times
                if times and times[-1] == now:
                    self.deltas[-1] += value - old
                else:
                    times.append(now)
                    self.deltas.append(value - old)
                list.__setitem__(self, 1, value)
        else:  # an absolute value: what came before it no longer counts
            self.at = _now[0]
            if self.times:
                self.times = []
                self.deltas = []
            list.__setitem__(self, 1, 0.0)
            list.__setitem__(self, 0, value)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:  # a hot restart pickles cells
        return (_rebuild, (list(self), self.at, self.times, self.deltas))


def _rebuild(cell: list[Any], at: int, times: list[int], deltas: list[float]) -> TimedGauge:
    gauge = TimedGauge([cell[0], 0.0])
    list.__setitem__(gauge, 1, cell[1])
    gauge.at, gauge.times, gauge.deltas = at, times, deltas
    return gauge


class TimedMetricMgr(MetricMgr):
    """A :class:`MetricMgr` whose gauge cells are :class:`TimedGauge` (each receive worker's,
    and the parent's when it receives on Unix sockets beside its workers)."""

    def cell(self, key: SeriesKey) -> Any:
        cell = super().cell(key)
        if key[1] == GAUGE and type(cell) is list:
            cell = self._table.series[key] = TimedGauge(cell)
        return cell
