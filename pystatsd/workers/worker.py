"""One receive worker: ``python -m pystatsd.workers.worker INDEX CONTROL_FD HELD_FD``, started
by the daemon's :class:`~pystatsd.workers.pool.WorkerPool` with its share of the listening
sockets as inherited descriptors (``PYSTATSD_INHERITED_SOCKETS``, as a hot restart's successor
takes them).

It runs today's receive path (listeners, ``Pipeline``, ``LineCache``, a ``MetricMgr`` with
timed gauges) and no forwarder. On the control connection (``multiprocessing.connection``
framing over a socketpair) the parent sends pickled commands:

  ("config", config)    first: build and start receiving, answer b"ready"
  ("flush",)            swap the table, answer its partials (``merge.encode_table``)
  ("peek", kinds)       answer the current table's series of those types, not swapped
                        (``merge.encode_view``: the admin console's view)
  ("forget", keys)      drop those series from the current table (the console's ``del*``),
                        answer b"ok"
  ("reload", config)    take a reloaded config (limits, tags, mapping), answer b"ok"
  ("stop", drain)       stop reading (``drain``: also what the socket still buffers, at the
                        daemon's stop; not at a hot restart, whose successor reads it), answer
                        the last partials and exit

Before each payload is applied it writes into ``HELD_FD`` (a memfd the parent maps) how many
payloads it holds since the last flush, that one included (from then on the payload is in the
table or lost with the process), and whenever the table makes a series, how many series; at a
flush's swap it moves the swapped table's exact counts into the page's second pair, which the
parent clears once it has the answer: what the parent reports as lost if this process dies,
before or during a flush.
Signals from outside are ignored (a stop of the service's whole cgroup must not lose the
interval): the parent decides, and the kernel kills a worker whose parent died."""

from __future__ import annotations

import ctypes
import gc
import itertools
import logging
import mmap
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from pystatsd.aggregation import SeriesKey
from pystatsd.graphite_ingest import GraphiteSource
from pystatsd.hot_restart import stop_shared_udp
from pystatsd.ingest import Pipeline
from pystatsd.listeners import UdpListener, open_listeners
from pystatsd.logsetup import configure_logging
from pystatsd.selfstats import SelfStats
from pystatsd.workers.gauge_order import TimedMetricMgr
from pystatsd.workers.merge import encode_table, encode_view

log = logging.getLogger("pystatsd.workers")

_CRASHED = 70
FROZEN_COLLECTION_FLUSHES = 360
"""As the daemon's (``Daemon._collect_frozen_cycles``): the heap is frozen after each flush,
and unfrozen and collected once in this many."""


HOLD_AFTER_SWAP_ENV = "PYSTATSD_TEST_HOLD_AFTER_SWAP"
"""Tests only: ``INDEX:FIFO``. Worker INDEX, at a flush while a reader has FIFO open, writes
its pid there after the swap and waits to be killed: a SIGKILL between swap and send, timed
by that barrier. Read once at start; no reader (or no variable) means a normal flush."""

HELD_PAYLOADS, HELD_SERIES, SWAPPED_PAYLOADS, SWAPPED_SERIES = range(4)
"""The shared page's words: held since the last flush, and held by a swapped table whose
partials the parent has not yet received (it clears those two when it has them)."""


def held_counts(page: mmap.mmap) -> memoryview:
    """The shared page as the words above (a memoryview store costs half a
    ``struct.pack_into``, and is made per payload)."""
    return memoryview(page).cast("Q")


class HeldSeriesMgr(TimedMetricMgr):
    """A worker's manager: each time it hands out a cell (a series made, or a line cache
    entry bound to this interval's cell, once per series and interval) it writes the table's
    series count into the shared page, so that the count is exact at any moment without a
    check per payload; and it ``reads_clock``, so that the payload's arrival stamp is the
    line cache's (in C), not a clock read in Python per payload."""

    reads_clock = True

    def __init__(self, config: dict[str, Any], stats: SelfStats, held: memoryview) -> None:
        super().__init__(config, stats)
        self.held = held

    def cell(self, key: SeriesKey) -> Any:
        cell = super().cell(key)
        self.held[HELD_SERIES] = len(self._table.series)
        return cell


def hold_after_swap(index: int) -> Callable[[], None] | None:
    """The test hook of :data:`HOLD_AFTER_SWAP_ENV` for worker ``index``, or None."""
    wanted = os.environ.get(HOLD_AFTER_SWAP_ENV, "")
    at, _, fifo = wanted.partition(":")
    if not fifo or int(at) != index:
        return None

    def hold() -> None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader now, so a normal flush
            return
        try:
            os.write(fd, b"%d\n" % os.getpid())
        finally:
            os.close(fd)
        threading.Event().wait()  # until the test's SIGKILL

    return hold


class Worker:
    def __init__(self, index: int, control: Connection, held: mmap.mmap) -> None:
        self.index = index
        self.control = control
        self.held = held_counts(held)
        self.lock = threading.Lock()
        self.stats = SelfStats()
        self._counted = itertools.count(1)
        """The payloads delivered since the last flush, that one included: ``next`` is the
        cheapest count there is in Python (the page is where the count is read)."""
        self._flushes = 0
        self._hold_after_swap = hold_after_swap(index)

    def build(self, config: dict[str, Any]) -> None:
        """What receiving needs: the table and the pipeline (``start`` then opens the
        listeners; bench/workers.py measures ``deliver`` on this alone)."""
        self.config = config
        self.manager = HeldSeriesMgr(config, self.stats, self.held)
        self.pipeline = Pipeline(config, self.manager, self.stats)

    def start(self, config: dict[str, Any], specs: list[dict[str, Any]]) -> None:
        self.build(config)
        self.listeners = open_listeners(specs, self.deliver, self.stats, self.deliver_batch)
        for listener in self.listeners:
            listener.start()

    def deliver(self, payload: bytes, fmt: str = "statsd", absolute_gauges: bool = False,
                graphite: GraphiteSource | None = None) -> None:
        # Per payload, what one process does not pay: a count and a store (the arrival stamp
        # for the gauges' order is the line cache's, gauge_order says).
        with self.lock:
            self.held[HELD_PAYLOADS] = next(self._counted)
            self.pipeline.ingest(payload, fmt, absolute_gauges, graphite)

    def deliver_batch(self, payloads: list[bytes], failed: Callable[[bytes], object],
                      absolute_gauges: bool = False) -> None:
        """The native receive's batch of a UDP statsd listener: one count, one store and one
        hold of the lock for the batch. The count goes up by the whole batch first, so a death
        inside it counts every datagram of it lost (they were drained and die with us). Its
        gauges share the batch's millisecond (the line cache stamps once per call): a batch is
        what one wake-up drained, so that is when they arrived, to within the batch's few ms."""
        with self.lock:
            total = self.held[HELD_PAYLOADS] + len(payloads)
            self.held[HELD_PAYLOADS] = total
            self._counted = itertools.count(total + 1)
            self.pipeline.ingest_batch(payloads, failed, absolute_gauges)

    def flush(self) -> bytes:
        with self.lock:
            self.pipeline.publish_counts()
            table = self.manager.swap()
            counts = self.stats.take()
            held = self.held
            # Until the parent has the answer, this table is what a death here would lose.
            held[SWAPPED_PAYLOADS] = held[HELD_PAYLOADS]
            held[SWAPPED_SERIES] = len(table.series) + len(table.stamped)
            held[HELD_PAYLOADS] = held[HELD_SERIES] = 0
            self._counted = itertools.count(1)
        if self._hold_after_swap is not None:
            self._hold_after_swap()
        encoded = encode_table(table, counts, self.manager.accuracy)
        del table
        self._freeze()
        return encoded

    def _freeze(self) -> None:
        """What lives now (the modules, the line cache, this interval's cells) stays out of the
        collector's passes, which otherwise walk every series while the receive thread waits;
        the daemon does the same after each flush."""
        self._flushes += 1
        if self._flushes % FROZEN_COLLECTION_FLUSHES == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    def peek(self, kinds: tuple[str, ...]) -> bytes:
        """The current table's series of ``kinds``, left in place (the admin console's view:
        receiving waits for the encoding, as for one process's copy of its table)."""
        with self.lock:
            return encode_view(self.manager.current_series(), kinds)

    def reload(self, config: dict[str, Any]) -> None:
        with self.lock:
            self.pipeline.publish_counts()
            self.config = config
            self.pipeline = Pipeline(config, self.manager, self.stats)

    def stop(self, drain: bool) -> None:
        """Stop every receive thread at a payload boundary without touching what the sockets'
        other holders (the parent, a hot restart's successor) share."""
        for listener in self.listeners:
            if not isinstance(listener, UdpListener):
                listener.stop()
                continue
            shared = socket.socket(fileno=os.dup(listener._sock.fileno()))
            if not stop_shared_udp(listener, 5.0):
                log.error("worker %d: a udp receive thread did not stop", self.index)
            if drain:  # per call, not O_NONBLOCK: that flag would be the parent's too
                size = listener.spec["max_datagram_bytes"]
                while True:
                    try:
                        payload = shared.recv(size, socket.MSG_DONTWAIT)
                    except OSError:
                        break
                    if payload:  # as the listener delivers: its format, gauge sign, graphite
                        listener._deliver(payload)
            listener.report_kernel_drops()
            shared.close()

    def serve(self) -> int:
        while True:
            try:
                command = pickle.loads(self.control.recv_bytes())  # from our parent only
            except (EOFError, OSError):
                return 0  # the parent is gone: nothing to hand the interval to
            if command[0] == "flush":
                self.control.send_bytes(self.flush())
            elif command[0] == "peek":
                self.control.send_bytes(self.peek(command[1]))
            elif command[0] == "forget":
                with self.lock:
                    self.manager.forget(command[1])
                    self.held[HELD_SERIES] = self.manager.series_count()
                self.control.send_bytes(b"ok")
            elif command[0] == "reload":
                self.reload(command[1])
                self.control.send_bytes(b"ok")
            elif command[0] == "stop":
                self.stop(drain=command[1])
                self.control.send_bytes(self.flush())
                return 0


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the control connection's end stops it
        pass


def _crashed(args: threading.ExceptHookArgs) -> None:
    log.critical("receive worker thread %s died: %s", args.thread.name if args.thread else "?",
                 args.exc_value, exc_info=args.exc_value or True)
    os._exit(_CRASHED)  # the parent restarts this worker and counts what it held


def main(argv: list[str]) -> int:
    index, control_fd, held_fd = (int(arg) for arg in argv[:3])
    _die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                   signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    threading.excepthook = _crashed
    control = Connection(control_fd)
    held = mmap.mmap(held_fd, mmap.PAGESIZE)
    kind, config, specs = pickle.loads(control.recv_bytes())
    assert kind == "config"
    configure_logging(config["logging"])
    worker = Worker(index, control, held)
    try:
        worker.start(config, specs)
    except Exception as exc:
        log.error("receive worker %d cannot start: %s", index, exc)
        return 1
    gc.freeze()  # everything made at start lives as long as the process
    control.send_bytes(b"ready")
    return worker.serve()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
