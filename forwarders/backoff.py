"""When a backend that failed may be tried again: the reconnect backoff of every forwarder
that keeps connections of its own (``statsd_relay``'s backends, ``carbon_routes`` and
``statsite_proxy``'s destinations, ``graphite``'s carbon connection)."""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """``minimum`` seconds after a failure, doubling per failure in a row up to ``maximum``;
    a success starts over. Times are the caller's clock (``time.monotonic()``)."""

    __slots__ = ("maximum", "minimum", "next_attempt", "_wait")

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.next_attempt = 0.0
        """Before this time, do not try (set by :meth:`failed`, or by a caller that waits)."""
        self._wait = minimum

    def waiting(self, now: float) -> bool:
        return now < self.next_attempt

    def failed(self, now: float) -> None:
        self.next_attempt = now + self._wait
        self._wait = min(self._wait * 2, self.maximum)

    def succeeded(self) -> None:
        self._wait = self.minimum
