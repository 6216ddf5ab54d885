"""What every forwarder has, whichever kind it is.

A forwarder takes what the daemon produces and delivers it somewhere. There are two kinds, each
with its own base class that owns the queue and the thread it really uses:

* :class:`~forwarders.aggregate.AggregateForwarder` gets one :class:`~forwarders.Snapshot` per
  flush, on the daemon's main thread, and delivers it on a thread of its own;
* :class:`~forwarders.relay.RelayForwarder` gets raw statsd lines as they arrive, on the
  receive thread, before aggregation, and sends them on a thread of its own.

The lifecycle, which the daemon keeps and ``forwarders.contract`` checks for every forwarder:

1. the constructor, with the section already validated against :meth:`Forwarder.section_schema`
   (a forwarder built directly gets the schema's defaults filled in here). It does no I/O:
   raising here refuses the config;
2. :meth:`Forwarder.start`, once: open the backend (not in ``debug_mode``) and start the thread.
   Raising here refuses the config too (at start-up: the daemon does not start);
3. ``submit`` (aggregate) or ``submit_lines`` (relay) any number of times. They never block
   and never raise: what does not fit is dropped and counted. An aggregate forwarder may have
   its pure encoding done before: ``prepare`` (a classmethod of the section and the snapshot
   alone) runs in the daemon's forked snapshot child, and its result reaches
   ``send_prepared`` (see :mod:`forwarders.aggregate`);
4. :meth:`Forwarder.close`, once, even when ``start`` failed or never ran: deliver what is
   queued within the deadline, release the backend, and return how many items (series or
   lines) were not delivered, which it also counts (``undelivered_at_close``) and logs.

Reload: a forwarder whose section (and the daemon's ``debug_mode``, host and ``state_dir``) is
unchanged keeps running, the same instance. A changed section is a new instance. An aggregate
forwarder's old instance is closed before the new one starts, so two instances of one section
never overlap (no two producers over one spool); a relay forwarder's new instance starts first
and the old one is closed after the receive path has switched, so no line arrives at a closed
relay. That is the only overlap there is, and a relay that holds a spool avoids it too
(``RelayForwarder.close_before_successor``): its new instance is fed (and buffers) while the
old one closes, and starts after it.

Stats: :meth:`Forwarder.stats` returns numbers by key, and the class declares each key's kind
in ``TOTALS`` (running totals since start, never decreasing: reported per flush as a counter of
their increase) and ``LEVELS`` (a current value, such as a queue depth: reported as a gauge).
Both hold glob patterns (``backend.*.queued_bytes``); every key matches exactly one of them.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from forwarders.schema import section_schema, with_defaults
from pystatsd.snapshot import ETSY_TIMER_STATS

__all__ = ["ETSY_TIMER_STATS", "Forwarder", "ForwarderContext", "NeededPath", "StatKind"]

StatKind = Literal["total", "level"]


class NeededPath(NamedTuple):
    """A path a forwarder will write: a directory it creates and writes in, or a file it
    creates or appends to. ``pystatsd --check-config`` checks each one in advance."""

    path: Path
    directory: bool


@dataclass(frozen=True)
class ForwarderContext:
    """What the daemon tells every forwarder: whether it only logs (``debug_mode``), the host
    name, and a directory it may keep state in (spools)."""

    debug_mode: bool = False
    host: str = "localhost"
    state_dir: Path = field(default_factory=lambda: Path("/var/lib/pystatsd"))


class Forwarder:
    """The common base of both kinds; subclass :class:`~forwarders.AggregateForwarder` or
    :class:`~forwarders.RelayForwarder`, not this."""

    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    """JSON Schema of this forwarder's own keys (the common keys are added for it); the one
    place each key's default is written."""
    TOTALS: ClassVar[tuple[str, ...]] = ("submitted", "sent", "send_errors",
                                         "dropped_queue_full", "undelivered_at_close")
    """Glob patterns of the :meth:`stats` keys that are running totals."""
    LEVELS: ClassVar[tuple[str, ...]] = ("queued",)
    """Glob patterns of the :meth:`stats` keys that are levels (gauges)."""
    KIND: ClassVar[str] = ""
    """``aggregate`` or ``relay``: set by the two kind bases."""

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        self.name = name
        self.context = context
        self.config: dict[str, Any] = with_defaults(self.section_schema(), config)
        self.log = logging.getLogger(f"pystatsd.forwarders.{name}")
        self.counters: dict[str, int] = {key: 0 for key in Forwarder.TOTALS}

    @classmethod
    def section_schema(cls) -> dict[str, Any]:
        """The full JSON Schema of this forwarder's config section."""
        return section_schema(cls.CONFIG_SCHEMA)

    @classmethod
    def needed_paths(cls, name: str, section: Mapping[str, Any],
                     context: ForwarderContext) -> dict[str, NeededPath]:
        """The paths this section will write, by the key that names each (``--check-config``
        checks them before start-up needs them). ``section`` has its defaults filled in."""
        return {}

    @classmethod
    def needed_stats(cls, section: Mapping[str, Any]) -> frozenset[str]:
        """The families of extra statistics this section writes (``ETSY_TIMER_STATS``). The
        daemon asks every running forwarder at start and reload; each flush computes the union
        once into each series' ``extra_stats``, which a forwarder that did not ask ignores. So
        what only one forwarder writes costs only when one wants it, and the others' output
        does not change. ``section`` has its defaults filled in."""
        return frozenset()

    @classmethod
    def stat_kind(cls, key: str) -> StatKind:
        """Whether the :meth:`stats` key ``key`` is a running total or a level; ``KeyError``
        for a key the class did not declare."""
        return _stat_kind(cls.TOTALS, cls.LEVELS, key)

    # -- the lifecycle, implemented by the kind bases -------------------------------------
    def start(self) -> None:
        """Open the backend (not in ``debug_mode``) and start this forwarder's thread."""
        raise NotImplementedError

    def close(self, timeout: float) -> int:
        """Deliver what is queued and release the backend within ``timeout`` seconds; return
        how many items were left undelivered (also counted and logged)."""
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """This forwarder's totals and levels (see ``TOTALS`` and ``LEVELS``)."""
        return dict(self.counters)

    # -- hooks for subclasses -------------------------------------------------------------
    def open(self) -> None:
        """Connect to the backend (called once from :meth:`start`, not in ``debug_mode``)."""

    def shutdown(self, timeout: float) -> int:
        """Release the backend within ``timeout``; return items left undelivered. Called once
        from :meth:`close`, after the thread has stopped, also in ``debug_mode``."""
        return 0

    def _count_undelivered(self, left: int) -> int:
        self.counters["undelivered_at_close"] += left
        if left:
            self.log.warning("forwarder %s left %d items undelivered at shutdown", self.name,
                             left)
        return left


@functools.cache
def _stat_kind(totals: tuple[str, ...], levels: tuple[str, ...], key: str) -> StatKind:
    is_total = any(fnmatch.fnmatchcase(key, pattern) for pattern in totals)
    is_level = any(fnmatch.fnmatchcase(key, pattern) for pattern in levels)
    if is_total == is_level:
        raise KeyError(f"stats key {key!r} is declared {'twice' if is_total else 'nowhere'} "
                       "(TOTALS/LEVELS)")
    return "total" if is_total else "level"
