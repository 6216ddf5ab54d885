"""What a flush hands to aggregate forwarders: the finished statistics of one interval.

Both types are frozen: a snapshot is complete when the daemon makes it (the self-metrics of the
interval included) and every forwarder sees the same one, so none may change it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pystatsd.sample import Tags

ETSY_TIMER_STATS = "etsy_timers"
"""A family of extra statistics (``SeriesStats.extra_stats``) a forwarder may ask for: Etsy
statsd's timer statistics beyond ``stats`` (``sum_squares``; per percentile T ``count_T``,
``mean_T``, ``upper_T``, ``sum_T``, ``sum_squares_T``; ``histogram.bin_B`` per bound of
``histogram_buckets``), for timers and histograms."""


@dataclass(frozen=True, slots=True)
class SeriesStats:
    """The statistics of one series over one interval.

    ``stats`` keys by type:
      counter            count (sample-rate weighted sum), rate (count per second)
      gauge              value
      timer, histogram   count, sum, min, max, mean, median, stddev, and one key per configured
                         percentile: p50, p90, p99, p99_9 (the dot becomes an underscore)
      set                count (unique members)
      trace              count (events in the interval; or since start with ``trace_cumulative``)
    """

    name: str
    type: str
    tags: Tags
    stats: dict[str, float]
    timestamp: float | None = None
    """The client's timestamp (seconds since the epoch) shared by the samples of a series
    stamped outside its interval and passed through (``late_samples: pass``), aggregated only
    with samples of the same series and second; None for an interval's aggregate."""
    partial: Mapping[str, Any] | None = None
    """The interval's mergeable state, filled only when a forwarder sends the ``partials``
    format (see :mod:`pystatsd.global_tier.partial_state` for its keys by type); None
    otherwise, and always for self-metrics. Plain numbers, strings, lists and ``bytes`` (the
    DDSketch protobuf), so a forwarder reads it without daemon types."""

    @property
    def key(self) -> str:
        """The series identity as one string: name, then ``,k=v`` per tag in sorted order."""
        if not self.tags:
            return self.name
        return self.name + "," + ",".join(f"{k}={v}" for k, v in self.tags)

    @property
    def extra_stats(self) -> Mapping[str, float] | None:
        """Statistics beyond ``stats`` that a forwarder asked for (``Forwarder.needed_stats``),
        keyed as their family names them: see :class:`ExtendedSeriesStats`; None here. Only
        the forwarders that asked read them."""
        return None


@dataclass(frozen=True, slots=True)
class ExtendedSeriesStats(SeriesStats):
    """A series with extra statistics (timers and histograms, when a forwarder asked). A
    subclass rather than a field of :class:`SeriesStats`: a frozen dataclass pays for each
    field at every construction (one more cost 1,350 instructions, 12% of making one, measured
    under callgrind), and most series never have them."""

    extra_stats: Mapping[str, float] | None = None


EVENT = "event"
SERVICE_CHECK = "service_check"


@dataclass(frozen=True, slots=True)
class Event:
    """A DogStatsD event (``_e{...}``) or service check (``_sc|...``), as the client sent it,
    the agent tags merged. Not aggregated: each one is forwarded with the flush of the interval
    it arrived in.

    ``kind`` is :data:`EVENT` or :data:`SERVICE_CHECK`. ``title`` is an event's title or a
    service check's name; ``text`` an event's text or a service check's message (``m:``).
    ``timestamp`` is ``d:``, seconds since the epoch, when sent. ``priority`` (``normal`` or
    ``low``), ``alert_type`` (``info``, ``warning``, ``error``, ``success``),
    ``aggregation_key`` and ``source_type_name`` are an event's, empty when not sent;
    ``status`` (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) is a service check's, None for an
    event."""

    kind: str
    title: str
    text: str = ""
    tags: Tags = ()
    timestamp: float | None = None
    hostname: str = ""
    priority: str = ""
    alert_type: str = ""
    aggregation_key: str = ""
    source_type_name: str = ""
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One interval's flush.

    ``start`` is the interval's start in seconds since the epoch (aligned to the interval),
    ``interval`` its length in seconds (the flush interval; shorter only for the final flush
    at stop), ``host`` the daemon's host name, ``series`` every series sorted by name, type
    and tags, the daemon's self-metrics among them, ``events`` the DogStatsD events and
    service checks received in the interval, in arrival order.
    """

    start: float
    interval: float
    host: str
    series: tuple[SeriesStats, ...] = ()
    events: tuple[Event, ...] = ()

    @property
    def series_count(self) -> int:
        """``len(series)``, without making the series of a snapshot that makes them on demand
        (see :class:`DeferredSnapshot`)."""
        return len(self.series)

    def series_from(self, index: int) -> tuple[SeriesStats, ...]:
        """``series[index:]``, making only those of a snapshot that makes its series on demand
        (a forwarder's ``send_prepared`` reads the series its ``prepare`` did not see so)."""
        return self.series[index:]


_SERIES_SLOT = Snapshot.__dict__["series"]  # the slot under DeferredSnapshot's property


class DeferredSnapshot(Snapshot):
    """A :class:`Snapshot` whose first ``deferred`` series are made only when ``series`` is
    first read (then once, kept): the daemon hands one to its forwarders when every one of them
    prepared the flush in the snapshot child, so that its process need not make 100,000
    objects nobody reads (~5,000 instructions a series). To a reader it is a snapshot like
    any other; ``series_count`` and ``series_from`` past the deferred ones make nothing.
    Made with :meth:`of`; its inherited constructor (``dataclasses.replace``) makes a plain,
    complete one."""

    __slots__ = ("_make", "_deferred", "_tail", "_making")
    _make: Callable[[], list[SeriesStats]] | None
    _deferred: int
    _tail: tuple[SeriesStats, ...]
    _making: threading.Lock

    @classmethod
    def of(cls, start: float, interval: float, host: str, deferred: int,
           make: Callable[[], list[SeriesStats]], tail: tuple[SeriesStats, ...],
           events: tuple[Event, ...] = ()) -> DeferredSnapshot:
        """``make()`` gives the first ``deferred`` series; ``tail`` follows them."""
        snapshot = object.__new__(cls)
        for name, value in (("start", start), ("interval", interval), ("host", host),
                            ("events", events), ("_make", make), ("_deferred", deferred),
                            ("_tail", tail), ("_making", threading.Lock())):
            object.__setattr__(snapshot, name, value)
        return snapshot

    def _series(self) -> tuple[SeriesStats, ...]:
        try:
            return _SERIES_SLOT.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:  # not made yet
            pass
        with self._making:  # two forwarder threads reading at once make them once
            try:
                return _SERIES_SLOT.__get__(self)  # type: ignore[no-any-return]
            except AttributeError:
                pass
            assert self._make is not None
            made = self._make()
            if len(made) != self._deferred:
                raise ValueError(f"deferred series: {len(made)} made, {self._deferred} expected")
            series = (*made, *self._tail)
            _SERIES_SLOT.__set__(self, series)
            object.__setattr__(self, "_make", None)  # its frames can go
            return series

    def _set_series(self, series: tuple[SeriesStats, ...]) -> None:  # the dataclass __init__
        _SERIES_SLOT.__set__(self, series)

    series = property(_series, _set_series)  # type: ignore[assignment]

    @property
    def series_count(self) -> int:
        try:
            return len(_SERIES_SLOT.__get__(self))
        except AttributeError:
            return self._deferred + len(self._tail)

    def series_from(self, index: int) -> tuple[SeriesStats, ...]:
        try:
            return _SERIES_SLOT.__get__(self)[index:]  # type: ignore[no-any-return]
        except AttributeError:
            pass
        if index >= self._deferred:
            return self._tail[index - self._deferred:]
        return self.series[index:]
