"""The base of forwarders that get each flush: a bounded queue of snapshots and one thread.

The daemon's main thread calls :meth:`AggregateForwarder.submit` once per flush; it only puts
the snapshot on the queue (``queue_size`` flushes), or drops and counts it when the queue is
full, so a slow backend only ever delays its own forwarder. The forwarder's thread takes the
snapshots in order and calls :meth:`AggregateForwarder.send` (or, in ``debug_mode``, logs what
:meth:`AggregateForwarder.describe` says would be sent).

Optionally a forwarder does its pure encoding before the snapshot reaches the daemon's process:
:meth:`AggregateForwarder.prepare`, a classmethod of the snapshot and the section alone, runs in
the forked snapshot child, and what it returns (plain data ``marshal`` carries) is handed back
with the snapshot to :meth:`AggregateForwarder.send_prepared`, on the forwarder's thread, which
only has to deliver it. A forwarder without ``prepare`` gets :meth:`AggregateForwarder.send` as
always, and so does one whose ``prepare`` could not run (no fork, a failed child).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import orjson

from forwarders.base import Forwarder, ForwarderContext
from forwarders.records import snapshot_records
from pystatsd.snapshot import Snapshot

__all__ = ["AggregateForwarder"]

_STOP = object()


class _Flush(NamedTuple):
    snapshot: Snapshot
    prepared: list[Any] | None


class AggregateForwarder(Forwarder):
    """Subclasses implement :meth:`send`, and may override :meth:`open`, :meth:`shutdown` and
    :meth:`describe`; all of those run on the forwarder's thread except :meth:`open`
    (:meth:`start`'s caller) and :meth:`shutdown` (:meth:`close`'s caller)."""

    KIND: ClassVar[str] = "aggregate"

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        super().__init__(name, config, context)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=int(self.config["queue_size"]))
        self._thread: threading.Thread | None = None

    # -- called by the daemon -------------------------------------------------------------
    def start(self) -> None:
        if not self.context.debug_mode:
            self.open()
        self._thread = threading.Thread(target=self._run, name=f"forwarder-{self.name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, snapshot: Snapshot, prepared: list[Any] | None = None) -> bool:
        """Queue one flush without blocking; False (and counted) when the queue is full.
        ``prepared`` is what :meth:`prepare` returned for it, when it ran."""
        size = snapshot.series_count
        try:
            self._queue.put_nowait(_Flush(snapshot, prepared))
        except queue.Full:
            self.counters["dropped_queue_full"] += size
            return False
        self.counters["submitted"] += size
        return True

    def close(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self._discard_queued()
        try:
            left += self.shutdown(max(0.0, deadline - time.monotonic()))
        except Exception:  # a backend failing at exit must not stop the other forwarders
            self.log.exception("forwarder %s failed while shutting down", self.name)
        return self._count_undelivered(left)

    def stats(self) -> dict[str, float]:
        return {**self.counters, "queued": self._queue.qsize()}

    # -- implemented by subclasses --------------------------------------------------------
    def send(self, snapshot: Snapshot) -> None:
        """Deliver one flush; raise to have the failure counted (``send_errors``) and logged."""
        raise NotImplementedError

    @classmethod
    def prepare(cls, section: Mapping[str, Any], snapshot: Snapshot) -> list[Any] | None:
        """Optional: the pure part of sending ``snapshot`` (encoding it), done in advance, or
        None (the default) to have :meth:`send` do everything.

        It runs in the daemon's forked snapshot child, so it must need nothing but its
        arguments: ``section`` is this forwarder's config with the defaults filled in, and
        ``snapshot`` has the flush's ``start``, ``interval``, ``host`` and ``events`` and every
        series but the daemon's self-metrics, which the snapshot :meth:`send_prepared` gets
        has after them (``snapshot.series_from(len(series prepared))``). It must not touch the
        instance (it has none: its producer, locks and counters live in the daemon), log, or
        start a thread; it returns a list of plain data that ``marshal`` can carry (bytes,
        str, numbers, tuples, lists, dicts of those), carried back 2,000 items to a frame, or
        raises (counted as ``flush.prepare_failed``; the flush then goes to :meth:`send`)."""
        return None

    def send_prepared(self, snapshot: Snapshot, prepared: list[Any]) -> None:
        """Deliver one flush whose :meth:`prepare` ran: ``prepared`` is what it returned, and
        ``snapshot`` the whole flush (see :meth:`prepare`). A forwarder that has ``prepare``
        implements this; what it delivers must be what :meth:`send` delivers.

        When every forwarder of the daemon prepared the flush, ``snapshot`` makes its series
        objects only when ``series`` is first read (``pystatsd.snapshot.DeferredSnapshot``),
        on the reading thread: read ``snapshot.series_count`` and
        ``snapshot.series_from(covered)`` instead where they are all it needs, as the
        built-in ones do, and the daemon's process never makes them."""
        raise NotImplementedError

    def describe(self, snapshot: Snapshot) -> Iterator[str]:
        """What ``debug_mode`` logs instead of sending: one line per message."""
        for record in snapshot_records(snapshot):
            yield orjson.dumps(record).decode()

    # -- internals ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            snapshot, prepared = item
            size = snapshot.series_count
            try:
                if self.context.debug_mode:
                    for line in self.describe(snapshot):
                        self.log.info("debug_mode, not sent: %s", line)
                elif prepared is not None:
                    self.send_prepared(snapshot, prepared)
                else:
                    self.send(snapshot)
            except Exception as exc:  # a failing backend must never kill the forwarder thread
                self.counters["send_errors"] += 1
                self.log.error("forwarder %s failed to send %d series: %s", self.name, size, exc)
            else:
                self.counters["sent"] += size

    def _discard_queued(self) -> int:
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left += item.snapshot.series_count
        # A thread still stuck in a send past the deadline ends when that send returns.
        self._queue.put_nowait(_STOP)
        return left
