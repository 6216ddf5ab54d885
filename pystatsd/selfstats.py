"""The daemon's own counters, and rate-limited logging of what it rejects.

Every stage counts into one :class:`SelfStats` (received, decoded, rejected by reason,
aggregated, flushed, forwarded, dropped). At each flush the daemon takes the counts of the
interval and reports them as counters under the configured prefix."""

from __future__ import annotations

import logging
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
    "not_metric",
    "statsd_syntax",
)
"""Why an input is dropped: JSON that does not parse (bad_json), an object or line without a
name, type or value (missing_field), a value that is not a number or a sample rate out of (0, 1]
(bad_value), a type that is not known (unknown_type), a line or datagram over the size limit
(too_long), bytes that are not UTF-8 (not_utf8), a statsd line that does not have the
`name:value|type` shape (bad_line), a new series past `max_series` (too_many_series), a
DogStatsD event or service check, well-formed but not a metric (not_metric), a JSON sample
that cannot be relayed as a statsd line because its name, a tag or a set member holds statsd
syntax such as a newline or `|` (statsd_syntax; it is still aggregated)."""


class SelfStats:
    """Counters keyed by dotted names (``received.datagrams``, ``rejected.bad_json``...).

    Not locked: each counter is written by the thread that owns its stage, and ``take`` runs
    with the ingest lock held by the daemon."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 log_interval: float = 10.0) -> None:
        self.counters: Counter[str] = Counter()
        self._taken: Counter[str] = Counter()
        self._clock = clock
        self._log_interval = log_interval
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def reject(self, reason: str, detail: str, payload: bytes | str = b"") -> None:
        """Count one rejected input under ``rejected.<reason>`` and log it, at most once per
        ``log_interval`` per reason, saying how many like it were not logged."""
        self.counters["rejected." + reason] += 1
        now = self._clock()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._log_interval:
            self._suppressed[reason] += 1
            return
        self._last_logged[reason] = now
        skipped = self._suppressed.pop(reason, 0)
        shown = payload[:200] if isinstance(payload, str) else payload[:200].decode("utf-8",
                                                                                   "replace")
        more = f" ({skipped} more {reason} not logged since the last)" if skipped else ""
        log.warning("rejected (%s): %s: %r%s", reason, detail, shown, more)

    def take(self) -> dict[str, int]:
        """Return each counter's increase since the last ``take``."""
        now = Counter(self.counters)
        delta = {k: v - self._taken.get(k, 0) for k, v in now.items() if v != self._taken.get(k, 0)}
        self._taken = now
        return delta
