"""The forwarder contract.

A forwarder takes what the daemon produces and delivers it somewhere. Two kinds:

* aggregate forwarders (``RELAY = False``) get one :class:`~pystatsd.snapshot.Snapshot` per flush;
* relay forwarders (``RELAY = True``) get raw statsd lines as they arrive, before aggregation.

The daemon calls, in order: the constructor (config already validated against
``CONFIG_SCHEMA`` plus the common keys), :meth:`Forwarder.start`, then :meth:`submit` or
:meth:`submit_lines` any number of times from the receiving threads, then :meth:`close` once.
``submit``/``submit_lines`` never block: each forwarder owns a bounded queue drained by its own
thread, and what does not fit is dropped and counted. A subclass implements :meth:`send`
(or :meth:`send_lines`) and may override :meth:`open`, :meth:`flush` and :meth:`shutdown`;
those run on the forwarder's own thread, so a slow backend only ever delays that forwarder.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson

from pystatsd.snapshot import SeriesStats, Snapshot

__all__ = [
    "COMMON_SCHEMA_PROPERTIES",
    "Forwarder",
    "ForwarderContext",
    "series_record",
    "snapshot_records",
]

COMMON_SCHEMA_PROPERTIES: dict[str, Any] = {
    "type": {
        "type": "string",
        "description": "Which forwarder implementation runs this section; defaults to the "
        "section's own name, so several forwarders of one type can run under different names.",
    },
    "queue_size": {
        "type": "integer",
        "minimum": 1,
        "default": 64,
        "description": "How many flushes (aggregate forwarders) or datagrams' worth of lines "
        "(relay forwarders) may wait for this forwarder before new ones are dropped and counted.",
    },
}

_STOP = object()


@dataclass(frozen=True)
class ForwarderContext:
    """What the daemon tells every forwarder: whether it only logs (``debug_mode``), the host
    name, and a directory it may keep state in (spools)."""

    debug_mode: bool = False
    host: str = "localhost"
    state_dir: Path = field(default_factory=lambda: Path("/var/lib/pystatsd"))


class Forwarder:
    """Base class of every forwarder; see the module docstring for the contract."""

    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    """JSON Schema of this forwarder's own config keys (the common keys are added for it)."""
    RELAY: ClassVar[bool] = False
    GAUGE_KEYS: ClassVar[tuple[str, ...]] = ("queued", "_bytes", "_size", "_depth", "failing")
    """A :meth:`stats` key ending in one of these is a level, reported as a gauge; every other
    key is a running total, reported per flush as a counter of its change."""

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.log = logging.getLogger(f"pystatsd.forwarders.{name}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=int(config.get("queue_size", 64)))
        self._thread: threading.Thread | None = None
        self.counters: dict[str, int] = {
            "submitted": 0,
            "sent": 0,
            "send_errors": 0,
            "dropped_queue_full": 0,
            "undelivered_at_close": 0,
        }

    # -- called by the daemon -------------------------------------------------------------
    def start(self) -> None:
        """Open the backend and start this forwarder's thread."""
        if not self.context.debug_mode:
            self.open()
        self._thread = threading.Thread(target=self._run, name=f"forwarder-{self.name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, snapshot: Snapshot) -> bool:
        """Queue one flush without blocking; return False (and count it) when the queue is full."""
        return self._offer(snapshot, len(snapshot.series))

    def submit_lines(self, lines: list[bytes]) -> bool:
        """Queue raw lines (relay forwarders) without blocking; False when dropped."""
        return self._offer(lines, len(lines))

    def close(self, timeout: float) -> int:
        """Send what is queued, flush, and release the backend within ``timeout`` seconds.

        Returns how many items (series or lines) were left undelivered; they are also counted
        and logged."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self._discard_queued()
        if not self.context.debug_mode:
            try:
                left += self.shutdown(max(0.0, deadline - time.monotonic()))
            except Exception:  # a backend failing at exit must not stop the other forwarders
                self.log.exception("forwarder %s failed while shutting down", self.name)
        self.counters["undelivered_at_close"] += left
        if left:
            self.log.warning("forwarder %s left %d items undelivered at shutdown", self.name, left)
        return left

    def stats(self) -> dict[str, float]:
        """Counters and gauges describing this forwarder, for self-metrics and status."""
        return {**self.counters, "queued": self._queue.qsize()}

    # -- implemented by subclasses ------------------------------------------------------
    def open(self) -> None:
        """Connect to the backend (called once from :meth:`start`, not in debug mode)."""

    def send(self, snapshot: Snapshot) -> None:
        """Deliver one flush; raise to have the failure counted and logged."""
        raise NotImplementedError(f"{type(self).__name__} does not take snapshots")

    def send_lines(self, lines: list[bytes]) -> None:
        """Deliver raw lines (relay forwarders)."""
        raise NotImplementedError(f"{type(self).__name__} does not take raw lines")

    def shutdown(self, timeout: float) -> int:
        """Flush and release the backend within ``timeout``; return items left undelivered."""
        return 0

    def describe(self, item: Snapshot | list[bytes]) -> Iterator[str]:
        """What ``debug_mode`` logs instead of sending: one line per message."""
        if isinstance(item, Snapshot):
            for record in snapshot_records(item):
                yield orjson.dumps(record).decode()
        else:
            for line in item:
                yield line.decode("utf-8", "replace")

    # -- internals ------------------------------------------------------------------------
    def _offer(self, item: Any, size: int) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.counters["dropped_queue_full"] += size
            return False
        self.counters["submitted"] += size
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            size = len(item.series) if isinstance(item, Snapshot) else len(item)
            try:
                if self.context.debug_mode:
                    for line in self.describe(item):
                        self.log.info("debug_mode, not sent: %s", line)
                elif isinstance(item, Snapshot):
                    self.send(item)
                else:
                    self.send_lines(item)
            except Exception as exc:  # a failing backend must never kill the forwarder thread
                self.counters["send_errors"] += 1
                self.log.error("forwarder %s failed to send %d items: %s", self.name, size, exc)
            else:
                self.counters["sent"] += size

    def _discard_queued(self) -> int:
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            if item is not _STOP:
                left += len(item.series) if isinstance(item, Snapshot) else len(item)


def series_record(series: SeriesStats, snapshot: Snapshot) -> dict[str, Any]:
    """The structured record of one series of a flush: what the console and file forwarders
    print and the Kafka forwarder's ``json`` format sends."""
    return {
        "name": series.name,
        "type": series.type,
        "tags": dict(series.tags),
        "stats": series.stats,
        "interval_start": snapshot.start,
        "interval": snapshot.interval,
        "host": snapshot.host,
    }


def snapshot_records(snapshot: Snapshot) -> Iterator[dict[str, Any]]:
    """Given a snapshot, yield :func:`series_record` of each of its series."""
    for series in snapshot.series:
        yield series_record(series, snapshot)
