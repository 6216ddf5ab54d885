"""The samples of one timer or histogram series in one interval, and their statistics.

Exact while a series has at most ``timer_exact_samples`` samples of each kind (unit-rate and
sample-rated); past that the samples fold into a DDSketch beside exact count, sum, min, max,
mean and variance, so only the median and percentiles become approximate. The rule for adding
one sample is :meth:`Distribution.add`; the ingest fast path appends to ``values`` itself and
calls :meth:`MetricMgr.fold <pystatsd.aggregation.MetricMgr.fold>` past the limit (in
:mod:`pystatsd.aggregation`, beside the other update rules).
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
import os
from array import array
from collections import Counter
from collections.abc import Iterable
from itertools import repeat
from typing import Any

from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

Percentiles = list[tuple[float, str]]
"""The configured percentiles with their stats keys: [(99.9, "p99_9"), ...]."""

_RANK_EPSILON = 1e-9
"""Slack when comparing a cumulative weight with a rank, so that 7 * 100 / 100 landing a hair
above 7 in floating point does not push nearest-rank one element up."""


class ArrayStore(DenseStore):
    """The ddsketch library's ``DenseStore`` (the store ``DDSketch`` uses), its bins in an
    array of C doubles instead of a list of float objects: 8 bytes a bin where the list takes
    8 for the slot and 24 for each bin's float. Past ``timer_exact_samples`` every timer of an
    interval holds one sketch, so this halves what a folded timer costs (measured: 7.9 -> 3.9
    KiB a sketch of 1,000 samples with 1,000 distinct values, 4.4 -> 2.9 KiB with 80). The same
    bins, offsets and keys as the library's (a property test compares them); only the three
    methods that make or shift the bins are the library's written for an array."""

    def __init__(self, chunk_size: int = 128) -> None:
        super().__init__(chunk_size)
        self.bins: array[float] = array("d")  # type: ignore[assignment]

    def add(self, key: int, weight: float = 1.0) -> None:
        # The library's add with its _get_index inlined: an array's item costs a float object
        # made where the list had one; one Python call less per sample folded makes up for most
        # of it (bench/fold_cost.py: 8,843 instructions a sample folded with the list, 8,940
        # with this, 9,377 without the inlining).
        if key < self.min_key or key > self.max_key:
            self._extend_range(key)
        self.bins[key - self.offset] += weight
        self.count += weight

    def copy(self, store: DenseStore) -> None:
        super().copy(store)
        self.bins = array("d", store.bins)  # type: ignore[assignment]

    def _extend_range(self, key: int, second_key: int | None = None) -> None:
        if second_key is None:
            second_key = key
        new_min_key = min(key, second_key, self.min_key)
        new_max_key = max(key, second_key, self.max_key)
        if not self.bins:
            self.bins = _zeros(self._get_new_length(new_min_key, new_max_key))  # type: ignore[assignment]
            self.offset = new_min_key
            self._adjust(new_min_key, new_max_key)
        elif new_min_key >= self.min_key and new_max_key < self.offset + len(self.bins):
            self.min_key = new_min_key
            self.max_key = new_max_key
        else:
            new_length = self._get_new_length(new_min_key, new_max_key)
            if new_length > len(self.bins):
                self.bins.extend(_zeros(new_length - len(self.bins)))
            self._adjust(new_min_key, new_max_key)

    def _shift_bins(self, shift: int) -> None:
        if shift > 0:
            self.bins = _zeros(shift) + self.bins[:-shift]  # type: ignore[operator]
        elif shift < 0:
            self.bins = self.bins[-shift:] + _zeros(-shift)  # type: ignore[operator]
        self.offset -= shift


def _zeros(count: int) -> array[float]:
    return array("d", bytes(8 * count))


@functools.lru_cache(maxsize=16)
def _mapping(accuracy: float) -> LogarithmicMapping:
    """One ``LogarithmicMapping`` per accuracy, shared by every sketch of it: the library
    never changes a mapping after making it (its sketches only read gamma, the multiplier and
    the offset). Measured with tracemalloc: 4,462 -> 4,238 bytes a folded timer (1,001
    samples of 500 whole milliseconds), 0.56 MB at the lossless rate's 2,500 folded timers."""
    return LogarithmicMapping(accuracy)


def new_sketch(accuracy: float) -> BaseDDSketch:
    """What ``DDSketch(relative_accuracy=accuracy)`` makes (its mapping, unbounded dense
    stores), with :class:`ArrayStore` for both stores."""
    return BaseDDSketch(mapping=_mapping(accuracy), store=ArrayStore(),
                        negative_store=ArrayStore(), zero_count=0.0)


def fold_values_python(values: array[float], sketch: BaseDDSketch) -> bool:
    """``sketch.add(value)`` for every value, in fewer Python steps: the keys by ``map``, one
    store update per distinct key with how many samples it has. The reference (and
    :mod:`pystatsd._fold`'s model); tests/test_fold.py checks both against the library's add.

    Exactly the library's state, because: a key's first sample is the only one that can fall
    outside the store's range, and ``Counter`` keeps first-seen order, so ``_extend_range``
    runs with the same keys in the same order; adding n to a whole bin (or count) gives what
    n additions of 1.0 give (below 2**53), and a bin holding a fraction (a sample-rated
    weight) gets its n additions one by one; the sum is added value after value as the
    library adds it (``functools.reduce``, not ``sum``, which compensates from Python 3.12).
    False, with nothing changed, for a value that is not finite: the caller's per-sample add
    then does whatever the library does with it."""
    total = functools.reduce(operator.add, values, sketch._sum)
    if not math.isfinite(total) or type(sketch._mapping) is not LogarithmicMapping:
        return False
    mapping: Any = sketch._mapping
    limit = mapping.min_possible
    positive = Counter(_keys(mapping, filter(limit.__lt__, values)))
    negative = Counter(_keys(mapping, map(operator.neg, filter((-limit).__gt__, values))))
    _add_counts(sketch._store, positive)
    _add_counts(sketch._negative_store, negative)
    zeros = len(values) - positive.total() - negative.total()
    if zeros:
        sketch._zero_count = _add_ones(sketch._zero_count, zeros)
    if values:
        sketch._count = _add_ones(sketch._count, len(values))
        sketch._sum = total
        sketch._min = min(sketch._min, min(values))
        sketch._max = max(sketch._max, max(values))
    return True


def _keys(mapping: Any, values: Iterable[float]) -> Iterable[int]:
    """``map(mapping.key, values)`` without its two Python calls a value: the library's
    ``int(math.ceil(math.log(value, 2) * multiplier) + offset)`` by ``map`` alone, where the
    offset is 0.0 (``int(n + 0.0)`` is ``n`` for any key a double can make)."""
    if mapping._offset != 0.0:
        return map(mapping.key, values)
    return map(math.ceil, map(operator.mul, map(math.log, values, repeat(2)),
                              repeat(mapping._multiplier)))


def _add_counts(store: Any, counts: Counter[int]) -> None:
    for key, count in counts.items():
        if key < store.min_key or key > store.max_key:
            store._extend_range(key)
        index = key - store.offset
        store.bins[index] = _add_ones(store.bins[index], count)
        store.count = _add_ones(store.count, count)


def _add_ones(start: float, count: int) -> float:
    """``start`` plus ``count`` additions of 1.0, as the library makes them one by one."""
    start = float(start)
    if start.is_integer() and abs(start) + count <= 2.0 ** 53:
        return start + count
    for _ in range(count):
        start += 1.0
    return start


def sum_min_max_python(values: array[float]) -> tuple[float, float, float]:
    """The exact sum, the least and the greatest of ``values`` (the reference of the
    compiled ``sum_min_max``)."""
    return math.fsum(values), min(values, default=math.inf), max(values, default=-math.inf)


def squared_deviations_python(values: array[float], mean: float) -> float:
    """The exact sum of ``(value - mean) ** 2`` (the reference of the compiled one)."""
    deviations = list(map(operator.sub, values, repeat(mean)))
    return math.fsum(map(operator.mul, deviations, deviations))


FOLD_ENV = "PYSTATSD_FOLD"
"""``python`` folds timers with :func:`fold_values_python` even where :mod:`pystatsd._fold` is
built (for tests, and for an operator who suspects the compiled one); ``library`` calls the
ddsketch library's ``add`` per sample, as before either existed (what bench/fold_cost.py
compares them with); ``compiled`` refuses to start without it; unset or ``auto``: the compiled
one if it imports."""


def _decline(values: array[float], sketch: BaseDDSketch) -> bool:
    return False


def _select_fold() -> tuple[Any, Any, Any, str]:
    """The functions :meth:`Distribution.fold` uses (the sketch's add, the exact sum with the
    extremes, the squared deviations), and a phrase saying which and why."""
    python = (sum_min_max_python, squared_deviations_python)
    wanted = os.environ.get(FOLD_ENV, "auto").strip().lower() or "auto"
    if wanted == "library":
        return _decline, *python, f"the library's add per sample ({FOLD_ENV}=library)"
    if wanted == "python":
        return fold_values_python, *python, f"python ({FOLD_ENV}=python)"
    if wanted not in ("auto", "compiled"):
        raise RuntimeError(f"{FOLD_ENV}={wanted!r}: expected library, python, compiled or "
                           f"auto")
    try:
        from pystatsd._fold import fold_values as fold
        from pystatsd._fold import squared_deviations as squares
        from pystatsd._fold import sum_min_max as extremes
    except ImportError as exc:
        if wanted == "compiled":
            raise RuntimeError(f"{FOLD_ENV}=compiled but pystatsd._fold does not import: "
                               f"{exc}") from exc
        return fold_values_python, *python, f"python (pystatsd._fold does not import: {exc})"
    return fold, extremes, squares, "compiled"


fold_values, sum_min_max, squared_deviations, FOLD = _select_fold()


def _append_double(values: Any, value: float, cap: int = 0) -> None:
    values.append(value)


def _extend_doubles(values: Any, more: Iterable[float]) -> None:
    if isinstance(more, array) and more.typecode != values.typecode:
        more = more.tolist()  # array.extend takes only an array of its own kind
    values.extend(more)


def _keep_doubles(values: Any) -> None:
    pass


def _new_doubles() -> array[float]:
    return array("d")


def _select_samples() -> tuple[Any, Any, Any, Any, str]:
    """How a timer keeps its exact samples: ``new_samples()`` makes the array, and only
    ``append_sample(values, value, cap)``, ``extend_samples(values, more)`` and
    ``narrow_samples(values)`` (after a fold emptied it) write into it. Where the compiled line
    cache runs (the set cells follow the same rule, ``aggregation.new_set_cell``), its
    functions: 4 bytes a sample (an ``array('f')``) while every sample of the interval is a
    double that a float holds exactly, the array made an ``array('d')`` in place at the first
    that is not, so every sample stays exact (``pystatsd/_linecache.pyx``). Else the
    pure-Python reference's ``array('d')`` and its own methods."""
    if os.environ.get("PYSTATSD_LINE_CACHE", "auto").strip().lower() == "python":
        return _new_doubles, _append_double, _extend_doubles, _keep_doubles, "doubles"
    try:
        from pystatsd._linecache import append_sample, extend_samples, narrow_samples, new_samples
    except ImportError:
        return _new_doubles, _append_double, _extend_doubles, _keep_doubles, "doubles"
    return new_samples, append_sample, extend_samples, narrow_samples, "floats while exact"


new_samples, append_sample, extend_samples, narrow_samples, SAMPLES = _select_samples()


class Distribution:
    """The samples of one timer or histogram series in one interval.

    Samples sent at rate 1 go to ``values`` (the array the fast path appends to); samples with a
    sample rate go to ``weighted`` as (value, 1 / rate). When either list passes
    ``exact_limit`` samples both are folded into a DDSketch, and exact count, sum, min, max,
    mean and variance are kept beside it, so only the median and percentiles become
    approximate."""

    __slots__ = ("values", "weighted", "sketch", "count", "total", "low", "high", "mean", "m2")

    def __init__(self) -> None:
        # An array of C floats (4 bytes a sample) or doubles (8) where a list of floats takes
        # 32: see _select_samples.
        self.values: array[float] = new_samples()
        self.weighted: list[tuple[float, float]] = []
        self.sketch: BaseDDSketch | None = None
        # Exact moments of what was folded into the sketch (Chan et al.'s parallel update).
        self.count = 0.0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, value: float, weight: float, exact_limit: int, accuracy: float) -> None:
        # Each list is checked on its own, as the fast path checks ``values`` alone: so a series
        # mixing rates stays exact up to twice the limit, and both paths fold at the same sample.
        if weight == 1.0:
            append_sample(self.values, value, exact_limit + 1)
            if len(self.values) > exact_limit:
                self.fold(accuracy)
        else:
            self.weighted.append((value, weight))
            if len(self.weighted) > exact_limit:
                self.fold(accuracy)

    def fold(self, accuracy: float) -> None:
        """Move the kept samples into the sketch and the exact moments; empty both lists."""
        values, weighted = self.values, self.weighted
        if not values and not weighted:
            return
        if self.sketch is None:
            self.sketch = new_sketch(accuracy)
        add = self.sketch.add
        if not fold_values(values, self.sketch):
            for value in values:
                add(value)
        for value, weight in weighted:
            add(value, weight)
        unit_total, unit_low, unit_high = sum_min_max(values)
        count = len(values) + math.fsum(w for _, w in weighted)
        total = unit_total + math.fsum(v * w for v, w in weighted)
        mean = total / count
        m2 = (squared_deviations(values, mean)
              + math.fsum(w * (v - mean) ** 2 for v, w in weighted))
        low = min(unit_low, min((v for v, _ in weighted), default=math.inf))
        high = max(unit_high, max((v for v, _ in weighted), default=-math.inf))
        if self.count:
            delta = mean - self.mean
            merged = self.count + count
            self.m2 += m2 + delta * delta * self.count * count / merged
            self.mean += delta * count / merged
            self.count = merged
        else:
            self.count, self.mean, self.m2 = count, mean, m2
        self.total += total
        self.low = min(self.low, low)
        self.high = max(self.high, high)
        del self.values[:]  # in place: the fast path holds this very array
        narrow_samples(self.values)
        self.weighted.clear()

    def stats(self, percentiles: Percentiles, accuracy: float) -> dict[str, float]:
        """The interval's count, sum, min, max, mean, median, stddev and percentiles."""
        if self.sketch is not None:
            self.fold(accuracy)
            return self._sketch_stats(percentiles)
        if not self.weighted:
            ordered = self.values.tolist()
            ordered.sort()
            return _unit_stats(ordered, percentiles)
        return _weighted_stats(_pairs(self.values, self.weighted), percentiles)

    def _sketch_stats(self, percentiles: Percentiles) -> dict[str, float]:
        assert self.sketch is not None

        sketch = self.sketch

        def quantile(q: float) -> float:
            # The sketch's answer is within the relative accuracy; it may still stray past the
            # exact extremes, which we know, so keep it inside them.
            found = sketch.get_quantile_value(q)
            return min(max(found if found is not None else self.mean, self.low), self.high)

        stats = {
            "count": self.count,
            "sum": self.total,
            "min": self.low,
            "max": self.high,
            "mean": self.mean,
            "median": quantile(0.5),
            "stddev": math.sqrt(max(self.m2, 0.0) / self.count),
        }
        for pct, key in percentiles:
            stats[key] = quantile(pct / 100.0)
        return stats

    def etsy_stats(self, percentiles: Percentiles, accuracy: float) -> dict[str, float]:
        """What Etsy statsd's timers report beyond :meth:`stats` (``lib/process_metrics.js``),
        keyed as Etsy keys them: ``sum_squares``, and for each percentile T the lowest T% of the
        samples' ``count_T``, ``mean_T``, ``upper_T`` (their largest), ``sum_T`` and
        ``sum_squares_T`` (see :func:`etsy_thresholds`).

        As in Etsy each sample counts once in the thresholds, whatever its sample rate;
        ``sum_squares`` weighs it by 1 / rate, as ``sum`` does, so that count, sum and
        sum_squares give the variance. Exact while the samples are kept; past the cap they come
        from the sketch's bins (:func:`_sketch_thresholds`): sum, mean and upper within
        ``accuracy`` of the true value (relative), sum_squares within twice that; the counts are
        exact but weigh sampled samples by 1 / rate, as the sketch does."""
        if self.sketch is not None:
            self.fold(accuracy)
            stats = {"sum_squares": max(self.m2, 0.0) + self.count * self.mean * self.mean}
            bins = _sketch_bins(self.sketch, self.low, self.high)
            stats.update(_sketch_thresholds(bins, self.count, (p for p, _ in percentiles)))
            return stats
        values, weighted = self.values, self.weighted
        ordered = values.tolist()
        ordered.extend(value for value, _ in weighted)
        ordered.sort()
        stats = etsy_thresholds(ordered, (p for p, _ in percentiles))
        if weighted:
            stats["sum_squares"] = math.fsum((*map(operator.mul, values, values),
                                              *(w * v * v for v, w in weighted)))
        return stats

    def stats_with_etsy(self, percentiles: Percentiles,
                        accuracy: float) -> tuple[dict[str, float], dict[str, float]]:
        """:meth:`stats` and :meth:`etsy_stats`, sorting the samples once where it can."""
        if self.sketch is None and not self.weighted:
            ordered = self.values.tolist()
            ordered.sort()
            return _unit_stats(ordered, percentiles), etsy_thresholds(
                ordered, (p for p, _ in percentiles))
        return self.stats(percentiles, accuracy), self.etsy_stats(percentiles, accuracy)

    def etsy_bins(self, bounds: list[float]) -> dict[str, float]:
        """Etsy's ``histogram`` bins over ``bounds`` (sorted): ``histogram.bin_B`` counts the
        samples below B and at least the bound before (the first bin: all below it; an infinite
        bound: all the rest; samples past the last finite bound are in no bin without one), each
        sample once whatever its rate, as in Etsy. Past the cap from the sketch's ranks (by
        weight, within its accuracy)."""
        below: list[float]
        if self.sketch is not None:
            below = [self._sketch_rank(bound) for bound in bounds]
        else:
            ordered = self.values.tolist()
            ordered.extend(value for value, _ in self.weighted)
            ordered.sort()
            below = [float(bisect.bisect_left(ordered, bound)) for bound in bounds]
        bins: dict[str, float] = {}
        before = 0.0
        for bound, count in zip(bounds, below, strict=True):
            # the sketch's ranks have 6 decimals: so has their difference
            bins["histogram.bin_" + _etsy_bin_name(bound)] = round(count - before, 6)
            before = count
        return bins

    def buckets(self, bounds: list[float]) -> list[float]:
        """Cumulative counts of the samples (weighted by 1 / rate) at most each of ``bounds``
        (sorted). Exact while the samples are kept; from the sketch's quantiles once folded
        (then each count is the rank of the bound, within the sketch's accuracy)."""
        if self.sketch is not None:
            return [self._sketch_rank(bound) for bound in bounds]
        ordered = sorted(self.values)
        weighted = sorted(self.weighted)
        counts = []
        for bound in bounds:
            count = float(bisect.bisect_right(ordered, bound))
            count += math.fsum(w for v, w in weighted if v <= bound)
            counts.append(count)
        return counts

    def _sketch_rank(self, bound: float) -> float:
        if bound >= self.high:
            return self.count
        if bound < self.low:
            return 0.0
        assert self.sketch is not None
        low, high = 0.0, 1.0
        for _ in range(40):  # the largest q whose quantile is <= bound
            middle = (low + high) / 2
            found = self.sketch.get_quantile_value(middle)
            if found is not None and found <= bound:
                low = middle
            else:
                high = middle
        return round(low * self.count, 6)

    def release(self) -> None:
        """Free the samples once reported (a stale fast-path cache entry may still hold them)."""
        del self.values[:]
        narrow_samples(self.values)
        self.weighted.clear()
        self.sketch = None

    def __setstate__(self, state: tuple[Any, dict[str, Any]]) -> None:
        # A pickled Distribution (a hot restart's hand-over) keeps this process's kind of
        # samples array, whichever kind the pickling process had.
        for name, value in state[1].items():
            setattr(self, name, value)
        values = new_samples()
        extend_samples(values, self.values)
        self.values = values


def _pairs(values: array[float], weighted: list[tuple[float, float]]) -> list[tuple[float, float]]:
    pairs = [(value, 1.0) for value in values]
    pairs.extend(weighted)
    pairs.sort()
    return pairs


def _unit_stats(ordered: list[float], percentiles: Percentiles) -> dict[str, float]:
    """Stats of samples all sent at rate 1 (the usual case): plain nearest-rank percentiles."""
    count = len(ordered)
    total = sum(ordered)
    mean = total / count
    middle = count // 2
    median = ordered[middle] if count % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    stats = {
        "count": float(count),
        "sum": total,
        "min": ordered[0],
        "max": ordered[-1],
        "mean": mean,
        "median": median,
        # sqrt(Σ (x - mean)²) in one C call (with compensated summation), where a list of
        # deviations and one of their squares would make two float objects per sample.
        "stddev": math.dist(ordered, (mean,) * count) / math.sqrt(count),
    }
    for pct, key in percentiles:
        rank = max(1, math.ceil(pct * count / 100.0 - _RANK_EPSILON))
        stats[key] = ordered[min(rank, count) - 1]
    return stats


def _weighted_stats(pairs: list[tuple[float, float]], percentiles: Percentiles) -> dict[str, float]:
    """Stats of samples with sample rates: each counts 1 / rate times. With all weights 1 this
    gives exactly :func:`_unit_stats`."""
    count = math.fsum(w for _, w in pairs)
    total = math.fsum(v * w for v, w in pairs)
    mean = total / count
    stats = {
        "count": count,
        "sum": total,
        "min": pairs[0][0],
        "max": pairs[-1][0],
        "mean": mean,
        "median": _weighted_median(pairs, count),
        "stddev": math.sqrt(math.fsum(w * (v - mean) ** 2 for v, w in pairs) / count),
    }
    for pct, key in percentiles:
        stats[key] = _weighted_rank(pairs, pct * count / 100.0)
    return stats


def _weighted_rank(pairs: list[tuple[float, float]], rank: float) -> float:
    """The smallest value whose cumulative weight reaches ``rank`` (nearest-rank)."""
    cumulative = 0.0
    for value, weight in pairs:
        cumulative += weight
        if cumulative >= rank - _RANK_EPSILON:
            return value
    return pairs[-1][0]


def _weighted_median(pairs: list[tuple[float, float]], count: float) -> float:
    """The value at half the weight; the mean of two neighbours when the half falls between
    them (the usual median for equal weights)."""
    half = count / 2.0
    cumulative = 0.0
    for index, (value, weight) in enumerate(pairs):
        cumulative += weight
        if cumulative > half + _RANK_EPSILON:
            return value
        if cumulative >= half - _RANK_EPSILON and index + 1 < len(pairs):
            return (value + pairs[index + 1][0]) / 2.0
    return pairs[-1][0]


def percentile_key(pct: float) -> str:
    """The stats key of a percentile: 50 -> p50, 99.9 -> p99_9."""
    if float(pct).is_integer():
        return f"p{int(pct)}"
    return "p" + repr(float(pct)).replace(".", "_")


def etsy_threshold_suffix(pct: float) -> str:
    """Etsy's name of a threshold (``'' + pct``, first ``.`` -> ``_``, ``-`` -> ``top``):
    90 -> 90, 99.9 -> 99_9, -10 -> top10."""
    text = str(int(pct)) if float(pct).is_integer() else repr(float(pct))
    return text.replace(".", "_", 1).replace("-", "top", 1)


def _etsy_bin_name(bound: float) -> str:
    """Etsy's ``bins[i].toString().replace('.', '_')``: 0.5 -> 0_5, 100 -> 100, inf -> inf."""
    if bound == math.inf:
        return "inf"
    text = str(int(bound)) if float(bound).is_integer() else repr(float(bound))
    return text.replace(".", "_", 1)


@functools.cache
def _threshold_keys(pct: float) -> tuple[str, str, str, str, str]:
    """count_T, mean_T, upper_T (lower_topT for a negative T), sum_T, sum_squares_T."""
    suffix = etsy_threshold_suffix(pct)
    return ("count_" + suffix, "mean_" + suffix, ("upper_" if pct > 0 else "lower_") + suffix,
            "sum_" + suffix, "sum_squares_" + suffix)


def _js_round(x: float) -> int:
    """JavaScript's ``Math.round`` for x >= 0: halves go up (Python's ``round`` goes to even)."""
    whole = math.floor(x)
    return whole + 1 if x - whole >= 0.5 else whole


def _threshold_size(pct: float, count: float) -> int:
    """How many samples threshold ``pct`` takes: Etsy's ``Math.round(|pct| / 100 * count)``,
    computed in the same order so that the float rounds the same way; all of a lone sample."""
    return _js_round(abs(pct) / 100 * count) if count > 1 else math.ceil(count)


def etsy_thresholds(ordered: list[float], thresholds: Iterable[float]) -> dict[str, float]:
    """Etsy's statistics of sorted samples, each counted once: ``sum_squares``, and per
    threshold T the five of :func:`_threshold_keys`. A positive T takes the lowest round(T% of
    the count) samples and names their largest ``upper_T``; a negative one (Etsy's ``-10``)
    the highest, and names their smallest ``lower_top10``. A threshold that takes no sample
    reports nothing; a lone sample is all of every threshold."""
    count = len(ordered)
    if not count:
        return {}
    taken_by = [(pct, _threshold_size(pct, count)) for pct in thresholds]
    running = _running_sums(ordered, {count, *(taken if pct > 0 else count - taken
                                               for pct, taken in taken_by)})
    total_all, squares_all = running[count]
    stats: dict[str, float] = {"sum_squares": squares_all}
    for pct, taken in taken_by:
        if taken == 0:
            continue
        if pct > 0:
            total, total_squares = running[taken]
            boundary = ordered[taken - 1]
        else:
            below, below_squares = running[count - taken]
            total, total_squares = total_all - below, squares_all - below_squares
            boundary = ordered[count - taken]
        count_key, mean_key, boundary_key, sum_key, squares_key = _threshold_keys(pct)
        stats[count_key] = float(taken)
        stats[mean_key] = total / taken
        stats[boundary_key] = boundary
        stats[sum_key] = total
        stats[squares_key] = total_squares
    return stats


def _running_sums(ordered: list[float], cuts: set[int]) -> dict[int, tuple[float, float]]:
    """The sum and the sum of squares of the first ``cut`` samples, for each cut: Etsy's
    running sums (one addition after another, ascending), kept only where a threshold ends.
    ``sum`` with a float start continues the running sum in C without a float object per
    sample (the squares still make one)."""
    running: dict[int, tuple[float, float]] = {0: (0.0, 0.0)}
    total = squares = 0.0
    previous = 0
    mul = operator.mul
    for cut in sorted(cuts):
        if cut > previous:
            segment = ordered[previous:cut]
            total = sum(segment, total)
            squares = sum(map(mul, segment, segment), squares)
        running[cut] = (total, squares)
        previous = cut
    return running


def _sketch_bins(sketch: BaseDDSketch, low: float, high: float) -> list[tuple[float, float]]:
    """The sketch's non-empty bins as (value, weight), in ascending value, each value kept
    inside the exact extremes. The library has no public walk over its bins: these are the
    attributes its own protobuf conversion (``ddsketch.pb.proto``) reads."""
    mapping: Any = sketch._mapping
    negative: Any = sketch._negative_store
    positive: Any = sketch._store
    bins: list[tuple[float, float]] = []
    for index in range(len(negative.bins) - 1, -1, -1):
        if negative.bins[index]:
            bins.append((-mapping.value(index + negative.offset), negative.bins[index]))
    if sketch._zero_count:
        bins.append((0.0, sketch._zero_count))
    for index, weight in enumerate(positive.bins):
        if weight:
            bins.append((mapping.value(index + positive.offset), weight))
    return [(min(max(value, low), high), weight) for value, weight in bins]


def _sketch_thresholds(bins: list[tuple[float, float]], count: float,
                       thresholds: Iterable[float]) -> dict[str, float]:
    """:func:`etsy_thresholds` from a sketch's bins. Every sample in a bin is within the
    sketch's relative accuracy of the bin's value, so a sum of bin values (the boundary bin
    taken in part) is within it of the true sum, and a sum of squares within twice it."""
    stats: dict[str, float] = {}
    for pct in thresholds:
        taken = _threshold_size(pct, count)
        if taken == 0:
            continue
        total = squares = 0.0
        boundary = bins[-1][0] if pct > 0 else bins[0][0]
        remaining = float(taken)
        for value, weight in (bins if pct > 0 else reversed(bins)):
            share = min(weight, remaining)
            total += share * value
            squares += share * value * value
            remaining -= share
            if remaining <= _RANK_EPSILON:
                boundary = value
                break
        count_key, mean_key, boundary_key, sum_key, squares_key = _threshold_keys(pct)
        stats[count_key] = float(taken)
        stats[mean_key] = total / taken
        stats[boundary_key] = boundary
        stats[sum_key] = total
        stats[squares_key] = squares
    return stats
