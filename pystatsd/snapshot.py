"""What a flush hands to aggregate forwarders: the finished statistics of one interval.

Both types are frozen: a snapshot is complete when the daemon makes it (the self-metrics of the
interval included) and every forwarder sees the same one, so none may change it."""

from __future__ import annotations

from dataclasses import dataclass

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
    timestamp: float | None = None
    """The client's timestamp (seconds since the epoch) shared by the samples of a series
    stamped outside its interval and passed through (``late_samples: pass``), aggregated only
    with samples of the same series and second; None for an interval's aggregate."""

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
