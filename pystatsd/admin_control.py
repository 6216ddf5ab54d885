"""What the admin interfaces may read from and do to the running daemon.

The console and HTTP both go through one :class:`AdminControl`: counters, the relay backends,
the current aggregates (Etsy's ``counters``/``gauges``/``timers``/``sets``) and forgetting
them, the health flag a load balancer reads (``health down`` drains the node without
stopping it), the log level, and readiness. Reads of the aggregates take the daemon's ingest
lock for as long as one copy takes (with receive workers, each worker's for as long as its
encoding takes)."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from forwarders.statsd_relay import StatsdRelayForwarder
from pystatsd import logsetup
from pystatsd.aggregation import SeriesKey
from pystatsd.route_overlay import RouteOverlay
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, Tags
from pystatsd.workers.merge import encode_view, merged_view

if TYPE_CHECKING:
    from pystatsd.daemon import Daemon
    from pystatsd.watchdog import Watchdog

KINDS: dict[str, tuple[str, ...]] = {"counters": (COUNTER,), "gauges": (GAUGE,),
                                     "timers": (TIMER, HISTOGRAM), "sets": (SET,)}
"""Etsy's names of the aggregate tables, and the pystatsd types each shows."""

MALFORMED_REASONS = ("bad_json", "missing_field", "bad_value", "unknown_type", "too_long",
                     "not_utf8", "bad_line")
"""Rejects that mean the input did not parse (lyft's malformed_lines, Etsy's bad_lines_seen);
``too_many_series``, ``not_metric`` and ``statsd_syntax`` are well-formed input."""

_LOSS_PATTERNS = ("dropped*", "*.dropped*", "spool_dropped", "send_errors", "*.send_errors")
"""Forwarder totals whose growth means data did not get through (or a spool overflowed)."""


def display_name(name: str, tags: Tags) -> str:
    """A series as Etsy statsd names it: ``name;key=value;...`` (graphite's tag syntax)."""
    return name + "".join(f";{key}={value}" if value != "" else f";{key}"
                          for key, value in tags)


def matches(name: str, pattern: str) -> bool:
    """Etsy's ``del*`` matching: the exact name, or a folder ``prefix.*`` and all below it."""
    return name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1]))


class AdminControl:
    def __init__(self, daemon: Daemon, watchdog: Watchdog, readiness_window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.daemon = daemon
        self.watchdog = watchdog
        self.health = "up"
        self._window = readiness_window
        self._clock = clock
        self._loss_seen: dict[str, float] = {}
        self._loss_at: dict[str, float] = {}

    # -- counters -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Every self-metric counter since start, the receive counts included up to now (the
        pipeline keeps those in plain ints until asked)."""
        daemon = self.daemon
        with daemon.lock:
            if daemon.pipeline is not None:
                daemon.pipeline.publish_counts()
            return dict(daemon.stats.counters)

    def describe(self) -> dict[str, Any]:
        self.counters()  # publish the receive counts, so the description is current
        return self.daemon.describe()

    def malformed_lines(self, counters: dict[str, int]) -> int:
        return sum(counters.get("rejected." + reason, 0) for reason in MALFORMED_REASONS)

    def bytes_received(self, protocol: str) -> int:
        return sum(listener.bytes_received for listener in self.daemon.listeners
                   if listener.spec["protocol"] == protocol)

    @property
    def route_overlay(self) -> RouteOverlay:
        overlay = self.daemon.route_overlay
        assert overlay is not None, "the admin interfaces start after the overlay is loaded"
        return overlay

    def relays(self) -> list[StatsdRelayForwarder]:
        return [f for f in self.daemon.forwarders.values() if isinstance(f, StatsdRelayForwarder)]

    # -- aggregates -----------------------------------------------------------------------
    def aggregates(self, table: str) -> dict[str, Any]:
        """The current interval's series of one of Etsy's tables, by display name, sorted.
        With receive workers, their tables (asked for a peek, not swapped) merged with the
        daemon's own, as the next flush merges them."""
        merged: dict[str, Any] = {}
        for (name, _, tags), value in sorted(self._current(KINDS[table]),
                                             key=lambda item: item[0]):
            merged[display_name(name, tags)] = value
        return merged

    def _current(self, kinds: tuple[str, ...]) -> list[tuple[SeriesKey, Any]]:
        daemon = self.daemon
        manager = daemon.manager
        cells = None
        if daemon.workers is not None:
            answers = daemon.workers.peek(kinds)  # never wait on a worker under the ingest lock
            with daemon.lock:
                answers.append(encode_view(manager.current_series(), kinds))
            cells = merged_view(answers)
        with daemon.lock:  # the carried gauges are the daemon's, workers or not
            return [(key, value) for kind in kinds
                    for key, value in manager.current(kind, cells).items()]

    def forget(self, table: str, patterns: list[str]) -> list[str]:
        """Etsy's ``delcounters``/``delgauges``/``deltimers`` (and ``delsets``): drop every
        series matching each pattern; return the lines Etsy prints for it. With receive
        workers, from their tables too (a series that arrives between the listing and the
        deletion stays)."""
        daemon = self.daemon
        manager = daemon.manager
        lines = []
        keys = {display_name(key[0], key[2]): key for key, _ in self._current(KINDS[table])}
        chosen: list[SeriesKey] = []
        for pattern in patterns:
            names = sorted(name for name in keys if matches(name, pattern))
            if not names:
                lines.append(f"metric {pattern} not found")
            chosen.extend(keys.pop(name) for name in names)
            lines.extend(f"deleted: {name}" for name in names)
        if daemon.workers is not None:
            daemon.workers.forget(chosen)
        with daemon.lock:
            manager.forget(chosen)
        return lines

    # -- runtime control ------------------------------------------------------------------
    def set_health(self, state: str) -> None:
        if state not in ("up", "down"):
            raise ValueError(f"health is up or down, not {state!r}")
        self.health = state

    def log_level(self) -> str:
        return logsetup.current_level()

    def set_log_level(self, level: str) -> str:
        """Set the daemon's log level until the next reload or restart; return the old one.
        The running config holds it too, so reopening the log (SIGUSR1) keeps it."""
        previous = logsetup.set_level(level)
        self.daemon.config["logging"]["level"] = level.upper()
        return previous

    # -- readiness ------------------------------------------------------------------------
    def unready_reasons(self) -> list[str]:
        """Why a load balancer should not send here now; empty when ready. Health set down,
        a part of the daemon stuck (see :mod:`pystatsd.watchdog`), a relay backend marked
        failing, or a forwarder that dropped or failed to send within the readiness window
        (a Kafka forwarder that spools is ready until its spool overflows)."""
        reasons = []
        if self.health == "down":
            reasons.append("health is set down")
        if not self.daemon.listeners:
            reasons.append("no listener is bound")
        reasons.extend(f"{part} has made no progress for {silent:.1f}s"
                       for part, silent in self.watchdog.stuck().items())
        now = self._clock()
        for name, forwarder in list(self.daemon.forwarders.items()):
            stats = forwarder.stats()
            failing = [key for key, value in stats.items()
                       if value and key.split(".")[-1] == "failing"]
            if failing:
                reasons.append(f"forwarder {name}: {', '.join(sorted(failing))}")
            lost = sum(value for key, value in stats.items()
                       if any(fnmatch.fnmatchcase(key, p) for p in _LOSS_PATTERNS))
            previous = self._loss_seen.get(name)
            self._loss_seen[name] = lost
            if previous is not None and lost > previous:
                self._loss_at[name] = now
            if now - self._loss_at.get(name, -self._window - 1) <= self._window:
                reasons.append(f"forwarder {name} dropped or failed to send within the last "
                               f"{self._window:g}s")
        return reasons
