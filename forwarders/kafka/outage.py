"""Saying in the log when Kafka stops acknowledging, when it is back, and when what was held
during the outage has been delivered.

librdkafka retries quietly and does not always report an error (a broker that accepts
connections and then closes them shows only as silence), so an outage is judged by what the
forwarder sees: messages wait (in the producer or the spool) and none has been acknowledged for
:data:`OUTAGE_AFTER` seconds. The pump thread calls :meth:`OutageWatch.tick` every poll (50 ms),
so the first line comes at most ``OUTAGE_AFTER`` + 0.05 s after the last acknowledgement (or
after the first message began to wait, when nothing had been acknowledged yet).
"""

from __future__ import annotations

import logging
import math

__all__ = ["OUTAGE_AFTER", "OutageWatch"]

OUTAGE_AFTER = 5.0
"""Seconds without an acknowledgement, while messages wait, that make an outage."""


class OutageWatch:
    """Given the forwarder's name and log, turn what the pump sees at each tick into three
    lines per outage: begun (WARNING), broker back, backlog delivered (INFO)."""

    def __init__(self, name: str, log: logging.Logger, after: float = OUTAGE_AFTER) -> None:
        self._name = name
        self._log = log
        self._after = after
        self.outages = 0
        """Outages begun (a running total)."""
        self._state = "normal"  # normal -> down -> catching_up -> normal
        self._delivered = 0
        self._last_ack: float | None = None
        self._waiting_since: float | None = None
        self._began = 0.0
        self._back = 0.0
        self._held = 0
        self._held_at_back = 0
        self._delivered_at_back = 0

    @property
    def down(self) -> bool:
        return self._state == "down"

    def tick(self, now: float, in_memory: int, spooled: int, delivered: int) -> None:
        """``in_memory``: messages in the producer; ``spooled``: in the spool; ``delivered``:
        the running total of acknowledged messages."""
        acked = delivered != self._delivered
        if acked:
            self._delivered = delivered
            self._last_ack = now
        waiting = in_memory + spooled
        if not waiting:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        if self._state == "down":
            self._held = max(self._held, waiting)
            if acked:
                self._broker_back(now, in_memory, spooled)
            return
        quiet_since = max(self._last_ack if self._last_ack is not None else -math.inf,
                          self._waiting_since if self._waiting_since is not None else now)
        if waiting and now - quiet_since >= self._after:
            self._outage_begins(quiet_since, now, in_memory, spooled)
        elif self._state == "catching_up" and not spooled and (
                delivered - self._delivered_at_back >= self._held_at_back or not in_memory):
            self._state = "normal"
            self._log.info(
                "forwarder %s: kafka outage over after %.1f s: the %d messages held are "
                "delivered (%d delivered since the broker came back, %.1f s ago)", self._name,
                now - self._began, self._held, delivered - self._delivered_at_back,
                now - self._back)

    def _outage_begins(self, quiet_since: float, now: float, in_memory: int,
                       spooled: int) -> None:
        again = self._state == "catching_up"
        self._state = "down"
        if not again:
            self.outages += 1
            self._began = quiet_since
            self._held = 0
        self._held = max(self._held, in_memory + spooled)
        self._log.warning(
            "forwarder %s: kafka outage%s: no message acknowledged for %.1f s; %d in memory, "
            "%d spooled; new messages wait in memory, then in the spool", self._name,
            " again before the backlog was delivered" if again else "", now - quiet_since,
            in_memory, spooled)

    def _broker_back(self, now: float, in_memory: int, spooled: int) -> None:
        self._state = "catching_up"
        self._back = now
        self._held_at_back = in_memory + spooled
        self._delivered_at_back = self._delivered
        self._log.info(
            "forwarder %s: kafka acknowledges again after %.1f s; %d messages held (%d in "
            "memory, %d spooled), sending them", self._name, now - self._began,
            self._held_at_back, in_memory, spooled)
