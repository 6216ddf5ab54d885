"""carbon-relay-ng's aggregators: datapoints whose path matches go into buckets, one per
(output path, timestamp quantized to ``interval``), and each bucket becomes one datapoint once
``wait`` seconds of wall clock have passed since its timestamp.

The output path is ``format`` with the regex's groups filled in (``$1``, ``${name}``, as Go's
``Regexp.Expand``). Functions: sum, avg, min, max, last, count (as carbon-aggregator and
carbon-relay-ng). The raw datapoint still goes on to the routes unless ``drop_raw``."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from forwarders.carbon_routes.matching import Matcher, go_template

__all__ = ["FUNCTIONS", "Aggregator"]


class _Bucket:
    __slots__ = ("count", "last", "max", "min", "sum")

    def __init__(self, value: float) -> None:
        self.count = 1
        self.sum = self.min = self.max = self.last = value

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.last = value


FUNCTIONS: dict[str, Callable[[_Bucket], float]] = {
    "sum": lambda b: b.sum,
    "avg": lambda b: b.sum / b.count,
    "min": lambda b: b.min,
    "max": lambda b: b.max,
    "last": lambda b: b.last,
    "count": lambda b: float(b.count),
}


class Aggregator:
    """One ``aggregators[]`` entry; not thread-safe (its forwarder locks around it)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.function = FUNCTIONS[options["function"]]
        self.matcher = Matcher(options)
        self.regex = re.compile(options["regex"])
        self.template = go_template(options["format"])
        self.interval = int(options["interval"])
        self.wait = float(options["wait"])
        self.drop_raw = bool(options["drop_raw"])
        self.max_buckets = int(options["max_buckets"])
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        self.dropped = 0  # datapoints refused: too many open buckets

    def add(self, path: str, value: float, stamp: float) -> bool:
        """Take one datapoint; True when it matched (whether or not it fitted)."""
        if not self.matcher.matches(path):
            return False
        match = self.regex.search(path)
        if match is None:
            return False
        out = match.expand(self.template)
        quantized = int(math.floor(stamp / self.interval) * self.interval)
        bucket = self._buckets.get((out, quantized))
        if bucket is not None:
            bucket.add(value)
        elif len(self._buckets) < self.max_buckets:
            self._buckets[(out, quantized)] = _Bucket(value)
        else:
            self.dropped += 1
        return True

    def due(self, wall_clock: float, everything: bool = False) -> list[tuple[str, float, int]]:
        """The (path, value, timestamp) of every bucket whose wait is over (all of them with
        ``everything``), removed from the aggregator."""
        ready = [key for key in self._buckets if everything or key[1] + self.wait <= wall_clock]
        out = []
        for key in sorted(ready, key=lambda k: (k[1], k[0])):
            out.append((key[0], self.function(self._buckets.pop(key)), key[1]))
        return out

    def open_buckets(self) -> int:
        return len(self._buckets)
