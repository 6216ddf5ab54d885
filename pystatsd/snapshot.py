"""What a flush hands to aggregate forwarders: the finished statistics of one interval.

Both types are frozen: a snapshot is complete when the daemon makes it (the self-metrics of the
interval included) and every forwarder sees the same one, so none may change it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pystatsd.sample import Tags


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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One interval's flush.

    ``start`` is the interval's start in seconds since the epoch (aligned to the interval),
    ``interval`` its length in seconds (the flush interval; shorter only for the final flush
    at stop), ``host`` the daemon's host name, ``series`` every series sorted by name, type
    and tags, the daemon's self-metrics among them.
    """

    start: float
    interval: float
    host: str
    series: tuple[SeriesStats, ...] = ()
