"""A finished cell's mergeable state (the ``partial`` of a :class:`SeriesStats`), and merging
partials of one series back into statistics.

Keys of a partial, by type:

  counter            ``sum`` (sample-rate weighted)
  trace              ``count`` (events of the interval, never cumulative)
  gauge              ``value``; ``carried`` true when the series had no sample this interval;
                     or, between the receive workers of one daemon (pystatsd.workers), the
                     ordered form of :func:`ordered_gauge_partial`: ``base`` (the last absolute
                     value, or None), ``moved`` (the deltas since it), ``at`` (when ``base``
                     was set) and ``times``/``deltas`` (those deltas by millisecond)
  timer, histogram   exact: ``values`` (rate-1 samples) and ``weighted`` ([value, 1 / rate]
                     pairs); past ``timer_exact_samples``: ``sketch`` (the ddsketch library's
                     own protobuf, ``ddsketch.pb``), ``count``, ``sum``, ``min``, ``max``,
                     ``mean`` and ``m2`` (the sum of squared deviations, for stddev)
  set                ``members``: every member's 64-bit hash (``pystatsd.set_members``,
                     the same on every host), while the set has at most
                     ``partial_set_members``; past that ``hll``: a HyperLogLog sketch (Apache
                     DataSketches' ``hll_sketch``, lg_k :data:`HLL_LG_K`, in the library's own
                     compact serialised form, readable by its Java and C++ versions too) fed
                     those hashes as 64-bit integers, so that every host feeds it the same
                     values for the same member

Merging is exact for counters, traces, exact samples, and exact sets up to hash collisions
(``pystatsd.set_members`` says how likely); sketches of one relative
accuracy merge losslessly, so a merged percentile is within that accuracy of the percentile
over the union of every host's samples. HyperLogLog unions are lossless too (the union of
sketches is the sketch of the union), so a set that any host sketched is counted within the
sketch's error of the exact union: exact members from other hosts join the union as members.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from ddsketch.ddsketch import BaseDDSketch, DDSketch
from ddsketch.store import DenseStore

from pystatsd.distribution import Distribution, Percentiles, extend_samples
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE
from pystatsd.set_members import text_member_hash

if TYPE_CHECKING:
    from datasketches import hll_union
    from ddsketch.pb.ddsketch_pb2 import Store as StoreMessage

__all__ = ["HLL_LG_K", "SeriesMerge", "cell_partial", "load_set_sketches", "member_hashes",
           "ordered_gauge_partial", "set_partial", "sketch_bytes", "sketch_from_bytes"]

HLL_LG_K = 12
"""2^12 registers: 2.1 KB serialised (HLL_4), relative standard error 1.6%; the library's
``hll_sketch.get_rel_err(True, True, 12, 2)`` bounds a union's estimate at 3.3% (2 sigma)."""


@functools.cache
def _datasketches() -> ModuleType:
    """The library, imported at its first use: it imports numpy (300 ms and 17 MB of RSS
    here), which a daemon that never sketches a set should not pay."""
    import datasketches

    return datasketches


@functools.cache
def _protobuf() -> tuple[Any, Any, Any]:
    """The sketches' protobuf form, imported at its first use: protobuf's upb module is ~5 MB
    of RSS, which only a daemon with a ``partials`` forwarder, or with receive workers whose
    timers pass ``timer_exact_samples``, needs (this module is imported by every daemon, for
    the workers' merge)."""
    from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
    from ddsketch.pb.proto import DDSketchProto, KeyMappingProto

    return DDSketchMessage, DDSketchProto, KeyMappingProto


def load_set_sketches() -> None:
    """Import the HyperLogLog library and the sketches' protobuf form now: a daemon that sends
    partials calls this at start-up and reload, so each forked snapshot child inherits them
    instead of importing them again."""
    _datasketches()
    _protobuf()


def sketch_bytes(distribution: Distribution) -> bytes:
    assert distribution.sketch is not None
    sketch_proto = _protobuf()[1]
    return bytes(sketch_proto.to_proto(distribution.sketch).SerializeToString())


def sketch_from_bytes(data: bytes) -> BaseDDSketch:
    """The sketch of :func:`sketch_bytes`, as ``DDSketchProto.from_proto`` reads it, about
    three times faster: that adds every bin of the store's array (zeros included) in key order,
    growing the store at nearly each one, which made most of a member's merge time."""
    message_type, _, mapping_proto = _protobuf()
    message = message_type()
    message.ParseFromString(data)
    return BaseDDSketch(mapping=mapping_proto.from_proto(message.mapping),
                        store=_store_from_message(message.positiveValues),
                        negative_store=_store_from_message(message.negativeValues),
                        zero_count=message.zeroCount)


def _store_from_message(message: StoreMessage) -> DenseStore:
    store = DenseStore()
    offset = message.contiguousBinIndexOffset
    bins = [(offset + index, count)
            for index, count in enumerate(message.contiguousBinCounts) if count]
    bins.extend(message.binCounts.items())  # the sparse form, should a writer use it
    bins.sort()
    if bins:
        # The extremes first: the store grows once to hold them, and every other bin fits.
        store.add(*bins[-1])
        for key, count in bins[:-1]:
            store.add(key, count)
    return store


def set_partial(members: Collection[int], member_limit: int | None) -> dict[str, Any]:
    """A set's partial from its cell (the members' hashes): the hashes, or past
    ``member_limit`` of them (None: no limit) a HyperLogLog sketch of them, so a set of a
    million members travels in 2.1 KB."""
    if member_limit is None or len(members) <= member_limit:
        return {"members": list(members)}
    library = _datasketches()
    sketch = library.hll_sketch(HLL_LG_K, library.tgt_hll_type.HLL_4)
    update = sketch.update
    for member in members:
        update(member)
    return {"hll": bytes(sketch.serialize_compact())}


def member_hashes(members: Collection[Any]) -> list[int]:
    """A ``members`` list as hashes: each already one, or (from a host that sent format 1,
    the members' text) hashed as that host would now hash it."""
    return [member if type(member) is int else text_member_hash(str(member))
            for member in members]


def cell_partial(kind: str, cell: Any, value: float,
                 set_member_limit: int | None = None) -> dict[str, Any]:
    """The partial of one finished cell; ``value`` is a gauge's reported value,
    ``set_member_limit`` the ``partial_set_members`` a set is sketched past (None: never). A
    distribution must have been through :meth:`Distribution.stats` (which folds a sketched one)
    and not yet released."""
    if kind == COUNTER:
        return {"sum": cell[0]}
    if kind == TRACE:
        return {"count": cell[0]}
    if kind == GAUGE:
        return {"value": value, "carried": False}
    if kind == SET:
        return set_partial(cell, set_member_limit)
    if kind == TIMER or kind == HISTOGRAM:
        if cell.sketch is None:
            return {"values": cell.values.tolist(), "weighted": [list(p) for p in cell.weighted]}
        return {"sketch": sketch_bytes(cell), "count": cell.count, "sum": cell.total,
                "min": cell.low, "max": cell.high, "mean": cell.mean, "m2": cell.m2}
    raise ValueError(f"unknown metric type {kind!r}")


def ordered_gauge_partial(cell: Any) -> dict[str, Any]:
    """The ordered partial of a gauge cell (``[base or None, deltas since]``) that has not been
    finished and did not record when it changed, as if everything happened at time 0, in cell
    order (a cell that did, a receive worker's ``TimedGauge``, makes its own)."""
    base, moved = cell[0], cell[1]
    return {"base": base, "moved": moved, "at": None if base is None else 0,
            "times": [0] if moved else [], "deltas": [moved] if moved else []}


_NEVER = -1
"""``at`` of a gauge part with no absolute value: before every time (times are >= 0)."""


_UNUSED_DISTRIBUTION = Distribution()
_NO_MEMBERS: dict[int, None] = {}  # what a series that is not a set holds; nothing writes it


class SeriesMerge:
    """The partials of one series in one interval, merged as they arrive."""

    __slots__ = ("kind", "total", "gauge", "members", "union", "distribution", "ordered")

    def __init__(self, kind: str, new_members: Callable[[], Any] = dict) -> None:
        """``new_members`` makes the cell a set's hashes are kept in: a dict (the global
        tier), or the daemon's own set cell (the receive workers' merge passes
        ``aggregation.new_set_cell``: the compiled ``MemberSet`` takes a partial's hashes in
        C, and the merged cell is the table's without a copy)."""
        self.kind = kind
        self.total = 0.0
        self.gauge: tuple[bool, float, str, float] | None = None  # (fresh, at, host, value)
        self.members: Any = new_members() if kind == SET else _NO_MEMBERS  # hashes
        self.union: hll_union | None = None  # once any host sent its set as a sketch
        # Only a distribution's own: the others share one that nothing writes (a merge of
        # 100,000 series spent a fifth of its time making empty ones).
        self.distribution = (Distribution() if kind == TIMER or kind == HISTOGRAM
                             else _UNUSED_DISTRIBUTION)
        self.ordered: list[Any] | None = None
        """Ordered gauge parts merged so far: [at, base, moved, times, deltas]."""

    def add(self, partial: Mapping[str, Any], at: float, host: str, exact_limit: int,
            accuracy: float) -> None:
        """Merge one host's partial; ``at`` is the end of that host's interval (gauges)."""
        kind = self.kind
        if kind == COUNTER:
            self.total += float(partial["sum"])
        elif kind == TRACE:
            self.total += float(partial["count"])
        elif kind == GAUGE and "moved" in partial:
            self._add_ordered_gauge(partial)
        elif kind == GAUGE:
            # The latest value wins; a value sent this interval beats one only carried over.
            candidate = (not partial.get("carried", False), at, host, float(partial["value"]))
            if self.gauge is None or candidate[:3] > self.gauge[:3]:
                self.gauge = candidate
        elif kind == SET:
            if "hll" in partial:
                self._add_hll(partial["hll"])
            else:
                self._add_members(partial["members"])
        elif kind == TIMER or kind == HISTOGRAM:
            self._add_distribution(partial, exact_limit, accuracy)
        else:
            raise ValueError(f"unknown metric type {kind!r}")

    def _add_ordered_gauge(self, partial: Mapping[str, Any]) -> None:
        """One part of a gauge whose parts share a clock: the latest absolute value wins, and
        every delta at or after it (from any part) applies to it; deltas before it are
        overridden, as in one process. Parts with no absolute value only add deltas."""
        at = _NEVER if partial["at"] is None else int(partial["at"])
        incoming = [at, partial["base"], float(partial["moved"]), list(partial["times"]),
                    list(partial["deltas"])]
        current = self.ordered
        if current is None:
            self.ordered = incoming
            return
        later, earlier = (incoming, current) if at > current[0] else (current, incoming)
        since = later[0]
        steps = list(zip(later[3], later[4], strict=True))
        steps += [(t, d) for t, d in zip(earlier[3], earlier[4], strict=True) if t >= since]
        steps.sort(key=lambda step: step[0])  # stable: within a millisecond, part order
        moved = 0.0
        for _, delta in steps:
            moved += delta
        self.ordered = [since, later[1], moved, [t for t, _ in steps], [d for _, d in steps]]

    def cell(self) -> Any:
        """The merged state as a cell of ``pystatsd.aggregation`` (the receive workers' merge
        hands the daemon one table to finish): what one process would have held."""
        kind = self.kind
        if kind == COUNTER or kind == TRACE:
            return [self.total]
        if kind == GAUGE:
            if self.ordered is not None:
                at, base, moved = self.ordered[:3]
                return [None if at == _NEVER else base, moved]
            return [None if self.gauge is None else self.gauge[3], 0.0]
        if kind == SET:
            return self.members
        return self.distribution

    def _add_members(self, members: Collection[Any]) -> None:
        cell = self.members
        if type(cell) is dict:
            cell.update(dict.fromkeys(member_hashes(members)))
            return
        try:
            cell.update(members)  # hashes, each added in C
        except TypeError:  # a format-1 host's text (what was added before is added again)
            cell.update(member_hashes(members))

    def _add_hll(self, data: Any) -> None:
        if not isinstance(data, bytes):
            raise TypeError("a set's hll is not bytes")
        library = _datasketches()
        incoming = library.hll_sketch.deserialize(data)  # ValueError when it is not a sketch
        if self.union is None:
            self.union = library.hll_union(HLL_LG_K)
        self.union.update(incoming)

    def set_count(self) -> float:
        """The members of the union: exact while every host sent members, else the sketch's
        estimate with every exact member inserted (inserting one twice changes nothing)."""
        if self.union is None:
            return float(len(self.members))
        update = self.union.update
        for member in self.members:
            update(member)
        self.members.clear()
        return float(round(self.union.get_estimate()))

    def _add_distribution(self, partial: Mapping[str, Any], exact_limit: int,
                          accuracy: float) -> None:
        merged = self.distribution
        values = partial.get("values", ())
        if merged.sketch is None and len(merged.values) + len(values) <= exact_limit:
            extend_samples(merged.values, values)  # what adding one by one does, at C speed
        else:
            for value in values:
                merged.add(float(value), 1.0, exact_limit, accuracy)
        weighted = partial.get("weighted", ())
        if merged.sketch is None and len(merged.weighted) + len(weighted) <= exact_limit:
            merged.weighted.extend((float(value), float(weight)) for value, weight in weighted)
        else:
            for value, weight in weighted:
                merged.add(float(value), float(weight), exact_limit, accuracy)
        sketch = partial.get("sketch")
        if sketch is None:
            return
        incoming = sketch_from_bytes(sketch)
        merged.fold(accuracy)  # the exact samples so far join the sketch first
        if merged.sketch is None:
            # A BaseDDSketch: DDSketch, which Distribution names, adds only its constructor.
            merged.sketch = cast(DDSketch, incoming)
        else:
            merged.sketch.merge(incoming)
        count, mean, m2 = float(partial["count"]), float(partial["mean"]), float(partial["m2"])
        if merged.count:  # Chan et al.'s parallel update, as Distribution.fold does
            delta = mean - merged.mean
            both = merged.count + count
            merged.m2 += m2 + delta * delta * merged.count * count / both
            merged.mean += delta * count / both
            merged.count = both
        else:
            merged.count, merged.mean, merged.m2 = count, mean, m2
        merged.total += float(partial["sum"])
        merged.low = min(merged.low, float(partial["min"]))
        merged.high = max(merged.high, float(partial["max"]))

    def stats(self, interval: float, percentiles: Percentiles,
              accuracy: float) -> dict[str, float] | None:
        """The global statistics, keyed as a local daemon's (None: nothing to report)."""
        kind = self.kind
        if kind == COUNTER:
            return {"count": self.total, "rate": self.total / interval}
        if kind == TRACE:
            return {"count": self.total}
        if kind == GAUGE and self.ordered is not None:
            base = self.ordered[1] if self.ordered[0] != _NEVER else 0.0
            return {"value": base + self.ordered[2]}
        if kind == GAUGE:
            return None if self.gauge is None else {"value": self.gauge[3]}
        if kind == SET:
            return {"count": self.set_count()}
        distribution = self.distribution
        if distribution.sketch is None and not distribution.values and \
                not distribution.weighted:
            return None
        stats = distribution.stats(percentiles, accuracy)
        return {key: value for key, value in stats.items() if not math.isnan(value)}
