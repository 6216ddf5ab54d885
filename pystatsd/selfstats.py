"""The daemon's own counters, and rate-limited logging of what it rejects.

Every stage counts into one :class:`SelfStats` (received, decoded, rejected by reason,
aggregated, flushed, forwarded, dropped). At each flush the daemon takes the counts of the
interval and reports them as counters under the configured prefix."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("pystatsd.rejects")

REJECT_REASONS = (
    "bad_json",
    "missing_field",
    "bad_value",
    "unknown_type",
    "too_long",
    "not_utf8",
    "bad_line",
    "too_many_series",
    "timestamp_out_of_window",
    "late_sample",
    "bad_event",
    "not_metric",
    "statsd_syntax",
    "overflow",
)
"""Why an input is dropped: JSON that does not parse (bad_json), an object or line without a
name, type or value (missing_field), a value that is not a number or a sample rate out of (0, 1]
(bad_value), a type that is not known (unknown_type), a line or datagram over the size limit
(too_long), bytes that are not UTF-8 (not_utf8), a statsd line that does not have the
`name:value|type` shape (bad_line), a new series past `max_series` (too_many_series), a
sample whose client timestamp is further than `timestamp_window_seconds` from now
(timestamp_out_of_window), a sample stamped outside the current interval with
`late_samples: drop` (late_sample), a DogStatsD event or service check that does not
follow the datagram format (bad_event), a
DogStatsD event or service check, well-formed but not a metric (not_metric), a JSON sample
that cannot be relayed as a statsd line because its name, a tag or a set member holds statsd
syntax such as a newline or `|` (statsd_syntax; it is still aggregated), a finite sample that
would make its series' aggregate non-finite: a counter or trace sum past ±1.8e308, a sample rate
so small that 1 / rate is infinite, gauge deltas past ±1.8e308, a timer or histogram value or
1 / rate beyond 1e100 (overflow; the series' other samples still count)."""


class SelfStats:
    """Counters keyed by dotted names (``received.datagrams``, ``rejected.bad_json``...).

    Written from several threads: the UDP receive thread (the pipeline and the aggregation,
    under the daemon's ingest lock; the listener's own errors outside it), the TCP listener's
    asyncio thread (connections, over-long lines, ingest errors) and the main thread (flush
    counts). A ``Counter`` update is a read, an add and a store, which another thread can
    interleave, so every write and ``take`` hold a lock of their own. None of this is per
    line: the pipeline counts in plain ints and publishes them once per flush."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 log_interval: float = 10.0) -> None:
        self.counters: Counter[str] = Counter()
        """Every counter since start. Read it with :meth:`totals` from another thread."""
        self._lock = threading.Lock()
        self._taken: Counter[str] = Counter()
        self._clock = clock
        self._log_interval = log_interval
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def reject(self, reason: str, detail: str, payload: bytes | str = b"") -> None:
        """Count one rejected input under ``rejected.<reason>`` and log it, at most once per
        ``log_interval`` per reason, saying how many like it were not logged."""
        now = self._clock()
        with self._lock:
            self.counters["rejected." + reason] += 1
            last = self._last_logged.get(reason)
            if last is not None and now - last < self._log_interval:
                self._suppressed[reason] += 1
                return
            self._last_logged[reason] = now
            skipped = self._suppressed.pop(reason, 0)
        # Logged outside the lock: a slow log handler must not hold up the other writers.
        shown = payload[:200] if isinstance(payload, str) else payload[:200].decode("utf-8",
                                                                                   "replace")
        more = f" ({skipped} more {reason} not logged since the last)" if skipped else ""
        log.warning("rejected (%s): %s: %r%s", reason, detail, shown, more)

    def totals(self) -> dict[str, int]:
        """A copy of every counter since start."""
        with self._lock:
            return dict(self.counters)

    def take(self) -> dict[str, int]:
        """Return each counter's increase since the last ``take``."""
        with self._lock:
            now = Counter(self.counters)
            taken, self._taken = self._taken, now
        return {k: v - taken.get(k, 0) for k, v in now.items() if v != taken.get(k, 0)}
