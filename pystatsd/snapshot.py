"""What a flush hands to aggregate forwarders: the finished statistics of one interval.

Both types are frozen: a snapshot is complete when the daemon makes it (the self-metrics of the
interval included) and every forwarder sees the same one, so none may change it."""

from __future__ import annotations

from collections.abc import Mapping
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
