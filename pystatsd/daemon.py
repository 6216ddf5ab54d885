"""The daemon: owns listeners, pipeline, metric manager and forwarders, and runs the main loop.

Signals only record (their handlers put the number on a queue); the main loop acts:

    TERM, INT   graceful stop: stop listening, flush, drain forwarders within shutdown_timeout;
                a second TERM/INT during that stops at once
    HUP         reload the config file: build, validate, swap; an invalid file changes nothing
    USR1        reopen the log file (logrotate)
    USR2        hot restart: start the code on disk, hand it the sockets and the interval in
                flight, exit (pystatsd.hot_restart); a successor that fails changes nothing
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forwarders import (
    AggregateForwarder,
    Forwarder,
    ForwarderContext,
    RelayForwarder,
    discover,
    load_forwarder_class,
)
from pystatsd import __version__, forked_snapshot, systemd
from pystatsd.admin import SOCKET_NAME, AdminServer
from pystatsd.admin_runtime import AdminRuntime
from pystatsd.aggregation import LINE_CACHE, IntervalTable, MetricMgr
from pystatsd.config import Config, listeners, load_config
from pystatsd.graphite_ingest import GraphiteSource
from pystatsd.hot_restart import Predecessor, Successor, predecessor_pid
from pystatsd.ingest import Pipeline
from pystatsd.inherited_sockets import close_unclaimed
from pystatsd.listeners import UDP_RECEIVE, TcpListener, UdpListener, open_listeners
from pystatsd.logsetup import configure_logging
from pystatsd.pidfile import PidFile, PidFileError
from pystatsd.route_overlay import RouteOverlay
from pystatsd.sample import COUNTER, GAUGE
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import DeferredSnapshot, SeriesStats, Snapshot
from pystatsd.tagging import Tagger
from pystatsd.workers import worker_count
from pystatsd.workers.gauge_order import TimedMetricMgr, stamp
from pystatsd.workers.merge import TableMerge

if TYPE_CHECKING:  # imported in start() when there are workers: multiprocessing is ~3 MB
    from pystatsd.workers.pool import WorkerPool

log = logging.getLogger("pystatsd.daemon")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED_SIGNALS = (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
FROZEN_COLLECTION_FLUSHES = 360
"""Flushes between full collections of the heap the forked snapshot freezes (see
``Daemon._collect_frozen_cycles``)."""
RESTART_ONLY_KEYS = ("listeners", "bind_address", "bind_port", "mode", "state_dir", "workers")
"""Config keys a reload reports but does not apply: the running values stay until restart."""
_THREAD_DIED = -1
"""Queued like a signal number when a thread ends with an unexpected exception."""


def forwarder_context(config: Config, host: str) -> ForwarderContext:
    return ForwarderContext(debug_mode=config["debug_mode"], host=host,
                            state_dir=Path(config["state_dir"]))


def build_forwarder(name: str, section: dict[str, Any], context: ForwarderContext) -> Forwarder:
    """Instantiate (not start) the forwarder of one config section."""
    return load_forwarder_class(section.get("type", name))(name, section, context)


def build_forwarders(config: Config, host: str) -> dict[str, Forwarder]:
    """Instantiate (not start) every forwarder the config names, by section name."""
    context = forwarder_context(config, host)
    return {name: build_forwarder(name, section, context)
            for name, section in config["forwarders"].items()}


def needed_stats(forwarders: Iterable[Forwarder]) -> frozenset[str]:
    """The extra statistics families the forwarders ask for (``Forwarder.needed_stats``)."""
    return frozenset().union(*(f.needed_stats(f.config) for f in forwarders))


def _prepare(kind: type[AggregateForwarder], section: dict[str, Any], flush: Snapshot,
             series: list[SeriesStats]) -> list[Any] | None:
    """In the snapshot child: a forwarder's ``prepare`` of the flush with its finished series
    (the self-metrics, made after, are not among them)."""
    return kind.prepare(section, dataclasses.replace(flush, series=tuple(series)))


def _prepares(kind: type[AggregateForwarder]) -> bool:
    """Whether a forwarder class overrides ``prepare`` (the base's returns None)."""
    return kind.prepare.__func__ is not AggregateForwarder.prepare.__func__  # type: ignore[attr-defined]


def close_all(forwarders: Iterable[Forwarder], timeout: float = 0.0) -> None:
    for forwarder in forwarders:
        forwarder.close(timeout)


class Daemon:
    """One running pystatsd. ``start`` binds and starts everything, ``run`` loops until a stop
    signal and returns the exit status."""

    def __init__(self, config: Config, config_path: str | None = None,
                 clock: Callable[[], float] = time.time, host: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.host = host or socket.gethostname()
        self.stats = SelfStats()
        self.lock = threading.Lock()
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.worker_count = worker_count(config)
        # With receive workers the daemon's own cells (Unix sockets, a hot restart's hand-over)
        # merge with theirs by arrival time too.
        self.manager = TimedMetricMgr(config) if self.worker_count > 1 else MetricMgr(config)
        self.workers: WorkerPool | None = None
        """The receive workers (pystatsd.workers) with ``workers`` > 1; None with 1."""
        self.forwarders: dict[str, Forwarder] = {}
        self.pipeline: Pipeline | None = None
        self.listeners: list[UdpListener | TcpListener] = []
        self._tagger = Tagger(config["agent"]["tags"], config["tag_precedence"])
        self._interval_started = 0.0
        self._forwarder_totals: dict[str, float] = {}
        self._undeclared_stats: set[str] = set()
        self._fork_failures = 0
        """Forked snapshots that failed since start (their warnings are rate-limited)."""
        self._prepare_failures = 0
        """Forwarders' ``prepare`` that failed in the snapshot child since start (the same)."""
        self._flushes_since_collection = 0
        self._started_at = self.clock()
        self._last_flush: dict[str, float] = {}
        self.admin: AdminServer | None = None
        self.admin_runtime: AdminRuntime | None = None
        self.route_overlay: RouteOverlay | None = None
        self.last_loop = time.monotonic()  # each pass of the main loop: the watchdog's question
        self.last_reload = 0.0

    # -- start-up ---------------------------------------------------------------------
    def start(self) -> None:
        """Start forwarders, bind listeners and begin receiving; raise on any failure."""
        self._warn_about_clashes()
        successor = Successor.from_environment()
        self.forwarders = build_forwarders(self.config, self.host)
        self.manager.extra_stats = needed_stats(self.forwarders.values())
        self._load_route_overlay()  # before start: whether a relay waits may depend on it
        for forwarder in self.forwarders.values():
            if successor is None or successor.starts_now(forwarder):
                forwarder.start()
        self.pipeline = Pipeline(self.config, self.manager, self.stats, self._relays())
        specs = listeners(self.config)
        if self.worker_count > 1:  # UDP and TCP go to the workers; Unix sockets stay here
            from pystatsd.workers.pool import WorkerPool

            pooled = [spec for spec in specs if spec["protocol"] in ("udp", "tcp")]
            specs = [spec for spec in specs if spec not in pooled]
            self.workers = WorkerPool(self.worker_count, pooled, self.config, self.stats)
        self.listeners = open_listeners(specs, self._deliver if self.workers is None
                                        else self._deliver_stamped, self.stats,
                                        self._deliver_batch if self.workers is None else None)
        if self.workers is not None:
            self.workers.start()
            for address in self.workers.addresses:
                log.info("listening on %s in %d receive workers", address, self.worker_count)
        unclaimed = close_unclaimed()
        if unclaimed:
            log.warning("hot restart: closed %d inherited sockets no listener takes (fewer "
                        "workers): datagrams they held are lost", unclaimed)
        interval = float(self.config["flush_interval"])
        self._interval_started = math.floor(self.clock() / interval) * interval
        for listener in self.listeners:
            listener.start()
            host, port = listener.address
            log.info("listening on %s %s:%d", listener.spec["protocol"], host, port)
        if successor is not None:
            self._take_over(successor)
        self._start_admin()
        self._start_admin_interfaces()
        log.info("pystatsd started: mode %s, flush every %ss, forwarders: %s; udp receive: %s;"
                 " line cache: %s", self.config["mode"], self.config["flush_interval"],
                 ", ".join(self.forwarders) or "none", UDP_RECEIVE, LINE_CACHE)
        systemd.notify("READY=1")

    def _warn_about_clashes(self) -> None:
        """A clashing forwarder name that the config uses fails validation; one it does not
        use is still worth a line, since the operator's next config might."""
        registry = discover()
        used = {section.get("type", name) for name, section in self.config["forwarders"].items()}
        for name in sorted(set(registry.clashes) - used):
            log.warning("%s", registry.clash_line(name))

    # -- hot restart (pystatsd.hot_restart) ---------------------------------------------
    def hot_restart(self) -> bool:
        """SIGUSR2: hand over to a successor; True when it took over and this one must exit."""
        try:
            return Predecessor(self).run()
        except Exception:  # a bug here must not take the running daemon down
            self.stats.incr("hot_restart.failed")
            log.exception("hot restart failed; still serving here")
            return False

    def _take_over(self, successor: Successor) -> None:
        """Started by a hot restart: take the predecessor's interval, wait until it has
        exited, then start the aggregate forwarders it held (their spools may be locked)."""
        successor.take_over(self, float(self.config["hot_restart_timeout"]))
        for forwarder in self.forwarders.values():
            if not successor.starts_now(forwarder):
                forwarder.start()
        systemd.notify(f"MAINPID={os.getpid()}")

    def _load_route_overlay(self) -> None:
        """The operator's runtime route changes, on top of the file (pystatsd.route_overlay)."""
        self.route_overlay = RouteOverlay(self)
        self.route_overlay.apply_to(self.forwarders.values(), self.config)

    def _start_admin(self) -> None:
        path = Path(self.config["state_dir"]) / SOCKET_NAME
        try:
            self.admin = AdminServer(path, self.describe)
        except OSError as exc:  # status is a convenience: never a reason not to run
            log.warning("no admin socket (pystatsd --status will not answer): %s: %s",
                        path, exc.strerror or exc)
            return
        self.admin.start()

    # -- admin interfaces and watchdog (pystatsd.admin_runtime) -------------------------
    @property
    def started_at(self) -> float:
        return self._started_at

    @property
    def last_flush_at(self) -> float:
        return float(self._last_flush.get("at", self._started_at))

    def _start_admin_interfaces(self) -> None:
        self.admin_runtime = AdminRuntime(self)
        self.admin_runtime.start()

    def _stop_admin_interfaces(self) -> None:
        if self.admin_runtime is not None:
            self.admin_runtime.stop()
            self.admin_runtime = None

    def describe(self) -> dict[str, Any]:
        """What ``pystatsd --status`` prints: the daemon's state and every counter since start
        (the receive counts are published at each flush)."""
        with self.lock:
            counters = dict(self.stats.counters)
        now = self.clock()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "host": self.host,
            "config": self.config_path or "<built-in defaults>",
            "mode": self.config["mode"],
            "uptime_seconds": round(now - self._started_at, 3),
            "flush_interval": self.config["flush_interval"],
            "last_flush": self._last_flush,
            "listeners": [f"{listener.spec['protocol']} {host}:{port}"
                          for listener in self.listeners
                          for host, port in [listener.address]]
            + (self.workers.addresses if self.workers is not None else []),
            "workers": self.workers.describe() if self.workers is not None else None,
            "listener_state": [listener.describe() for listener in self.listeners],
            "counters": dict(sorted(counters.items())),
            "forwarders": {name: {"type": type(f).__name__, "kind": f.KIND, **f.stats()}
                           for name, f in self.forwarders.items()},
            "route_overlay": self.route_overlay.describe() if self.route_overlay else None,
        }

    def _relays(self) -> list[RelayForwarder]:
        return [f for f in self.forwarders.values() if isinstance(f, RelayForwarder)]

    def _deliver(self, payload: bytes, fmt: str = "statsd", absolute_gauges: bool = False,
                 graphite: GraphiteSource | None = None) -> None:
        with self.lock:
            assert self.pipeline is not None
            self.pipeline.ingest(payload, fmt, absolute_gauges, graphite)

    def _deliver_batch(self, payloads: list[bytes], failed: Callable[[bytes], object],
                       absolute_gauges: bool = False) -> None:
        """A batch of a UDP statsd listener's datagrams, under one hold of the ingest lock (a
        swap lands between two batches, never inside a datagram)."""
        with self.lock:
            assert self.pipeline is not None
            self.pipeline.ingest_batch(payloads, failed, absolute_gauges)

    def _deliver_stamped(self, payload: bytes, fmt: str = "statsd",
                         absolute_gauges: bool = False,
                         graphite: GraphiteSource | None = None) -> None:
        """With receive workers: this process's own gauges are ordered with theirs."""
        stamp()
        self._deliver(payload, fmt, absolute_gauges, graphite)

    # -- main loop --------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """Signals, and threads that die of an exception, only record; the main loop acts."""
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, self._record_signal)
        threading.excepthook = self._thread_died

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        # Every thread of ours catches what it expects; reaching this is a bug. Running on
        # without the thread would lose data silently, so the daemon stops, flushing first.
        name = args.thread.name if args.thread is not None else "?"
        log.critical("thread %s died: %s", name, args.exc_value,
                     exc_info=args.exc_value or True)
        self.stats.incr("thread.crashed")
        self.signals.put(_THREAD_DIED)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.signals.put(signum)  # SimpleQueue.put is safe to call from a signal handler

    def run(self) -> int:
        """Loop until a stop signal; flush at each aligned deadline; return the exit status."""
        interval = float(self.config["flush_interval"])
        deadline = self._next_deadline(self.clock(), interval)
        while True:
            try:
                signum = self.signals.get(timeout=max(0.0, deadline - self.clock()))
            except queue.Empty:
                signum = None
            self.last_loop = time.monotonic()
            if signum in _STOP_SIGNALS:
                log.info("received %s: stopping", signal.Signals(signum).name)
                return self.stop()
            if signum == _THREAD_DIED:
                log.error("stopping after a thread died (final flush first); the service "
                          "manager restarts the daemon")
                self.stop()
                return 1
            if signum == signal.SIGHUP:
                try:
                    self.reload()
                except Exception:  # a bug while applying a valid config: keep running
                    self.stats.incr("reload.failed")
                    log.exception("reload of %s failed while being applied", self.config_path)
                interval = float(self.config["flush_interval"])
                deadline = self._next_deadline(self.clock(), interval)
            elif signum == signal.SIGUSR2:
                if self.hot_restart():
                    return 0
                deadline = min(deadline, self._next_deadline(self.clock(), interval))
            elif signum == signal.SIGUSR1:
                if configure_logging(self.config["logging"]):
                    log.info("log reopened")
                else:
                    self.stats.incr("log.reopen_failed")
            now = self.clock()
            if now >= deadline:
                missed = int((now - deadline) // interval)
                if missed:
                    # A stalled process (SIGSTOP, swap) flushes once, not once per lost interval.
                    self.stats.incr("flush.missed", missed)
                    log.warning("missed %d flush deadlines", missed)
                try:
                    self.flush()
                except Exception:  # a bug in one flush loses that interval, not the daemon
                    self.stats.incr("flush.failed")
                    log.exception("flush failed; this interval's aggregates are lost")
                deadline = self._next_deadline(now, interval)

    @staticmethod
    def _next_deadline(now: float, interval: float) -> float:
        return (math.floor(now / interval) + 1) * interval

    # -- flushing ---------------------------------------------------------------------
    def flush(self, final: bool = False) -> Snapshot:
        """Close the current interval and hand its snapshot to every aggregate forwarder.

        The interval runs from the aligned deadline of the previous flush to this flush's
        aligned deadline (the flush interval, or a multiple of it after missed deadlines), or
        to now for the final flush at stop; counter rates are per second of that length."""
        interval = float(self.config["flush_interval"])
        merge = None
        if self.workers is not None:  # their counters join this interval's, taken below
            merge = TableMerge(self.manager)
            self.workers.collect(merge, final=final)
        with self.lock:
            assert self.pipeline is not None
            self.pipeline.publish_counts()
            table = self.manager.swap()
            now = self.clock()
            counts = self.stats.take()
        if merge is not None:
            merge.add_table(table)
            table = merge.table(self.manager, self.stats)
        start = self._interval_started
        end = now if final else math.floor(now / interval) * interval
        if end <= start:  # a reload changed the interval mid-way, or a stop right at a deadline
            end = max(now, start + 1e-9)
        self._interval_started = end
        events = tuple(table.events)
        preparation = self._preparation(Snapshot(start, end - start, self.host, (), events))
        finished = self._finish(table, end - start, preparation)
        self_metrics: list[SeriesStats] = []
        if self.config["self_metrics"]["enabled"]:
            self_metrics = self._self_metrics(counts, end - start, len(finished))
        snapshot: Snapshot
        if isinstance(finished, forked_snapshot.SeriesFrames):  # every forwarder prepared
            snapshot = DeferredSnapshot.of(start, end - start, self.host, len(finished),
                                           finished.make, tuple(self_metrics), events)
        else:
            snapshot = Snapshot(start, end - start, self.host, (*finished, *self_metrics),
                                events)
        self.stats.incr("flush.count")
        self._last_flush = {"at": now, "interval_start": start, "interval_seconds": end - start,
                            "series": snapshot.series_count}
        for forwarder in self.forwarders.values():
            if isinstance(forwarder, AggregateForwarder):
                forwarder.submit(snapshot, preparation.results.get(forwarder.name))
        forked_snapshot.release(table)
        return snapshot

    def _preparation(self, flush: Snapshot) -> forked_snapshot.Preparation:
        """Each aggregate forwarder's ``prepare``, to run in the snapshot child on ``flush``
        with the finished series (not in ``debug_mode``, which only describes)."""
        hooks = {forwarder.name: functools.partial(_prepare, type(forwarder), forwarder.config,
                                                   flush)
                 for forwarder in self.forwarders.values()
                 if isinstance(forwarder, AggregateForwarder) and not forwarder.context.debug_mode
                 and _prepares(type(forwarder))}
        return forked_snapshot.Preparation(hooks)

    def _finish(self, table: IntervalTable, seconds: float,
                preparation: forked_snapshot.Preparation | None = None
                ) -> list[SeriesStats] | forked_snapshot.SeriesFrames:
        """The finished table's series: from a forked child, so that receiving keeps its
        rate (and the forwarders' ``prepare`` runs there too); in process (paced) where
        forking is unavailable or fails, counted. When every aggregate forwarder has a
        ``prepare``, the child's frames are kept as they came (``SeriesFrames``): the objects
        are made only if a hook fails or returns None (that forwarder gets ``send``), or
        when a forwarder reads them. Without ``preparation``: no hooks, the series made."""
        if forked_snapshot.AVAILABLE:
            aggregate = [forwarder for forwarder in self.forwarders.values()
                         if isinstance(forwarder, AggregateForwarder)]
            defer = preparation is not None and len(preparation.hooks) == len(aggregate)
            try:
                finished = forked_snapshot.finish_forked(self.manager, table, seconds,
                                                         self.lock, preparation, defer=defer)
                self._collect_frozen_cycles()
                if preparation is not None:
                    self._report_prepare_failures(preparation)
                if (isinstance(finished, forked_snapshot.SeriesFrames) and preparation
                        and set(preparation.results) != set(preparation.hooks)):
                    return self._made_paced(finished)
                return finished
            except forked_snapshot.ForkedSnapshotError as exc:
                self.stats.incr("flush.fork_failed")
                if self._fork_failures % 100 == 0:  # at most one line in 100 failed flushes
                    log.warning("forked snapshot failed (%s); finishing in process", exc)
                self._fork_failures += 1
        return self.manager.finish(table, seconds)

    @staticmethod
    def _made_paced(frames: forked_snapshot.SeriesFrames) -> list[SeriesStats]:
        """The deferred series, made now for a forwarder that gets ``send``: paced, the
        collector off and the result frozen, as ``finish_forked`` makes them."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            series = frames.make(pace=True)
            gc.freeze()
        finally:
            if collecting:
                gc.enable()
        return series

    def _report_prepare_failures(self, preparation: forked_snapshot.Preparation) -> None:
        for name, why in preparation.failures.items():
            self.stats.incr("flush.prepare_failed")
            if self._prepare_failures % 100 == 0:  # at most one line in 100 failures
                log.warning("forwarder %s: prepare failed in the snapshot child (%s); it sends "
                            "that flush itself", name, why)
            self._prepare_failures += 1

    def _collect_frozen_cycles(self) -> None:
        """The forked snapshot freezes the heap after each flush (``gc.freeze``: the young
        collection that would follow walks every new series, 200 ms at 100,000). A reference
        cycle that was alive at a freeze and dies later (a closed TCP connection's transport
        and protocol) is then never collected; so, once every ``FROZEN_COLLECTION_FLUSHES``,
        everything is unfrozen and collected once: one planned pause an hour (at the 10 s
        default) instead of a leak that grows for as long as the daemon runs."""
        self._flushes_since_collection += 1
        if self._flushes_since_collection < FROZEN_COLLECTION_FLUSHES:
            return
        self._flushes_since_collection = 0
        began = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.stats.incr("gc.full_collections")
        log.debug("full collection of the frozen heap: %d objects freed in %.0f ms", found,
                  (time.perf_counter() - began) * 1000)

    def _self_metrics(self, counts: dict[str, int], elapsed: float,
                      flushed_series: int) -> list[SeriesStats]:
        prefix = self.config["self_metrics"]["prefix"]
        tags = self._tagger.apply(())
        series = [SeriesStats(prefix + name, COUNTER, tags,
                              {"count": float(n), "rate": n / elapsed})
                  for name, n in sorted(counts.items())]
        gauges: dict[str, float] = {"series": float(flushed_series)}
        if self.workers is not None:  # summed above; each worker's own share here
            gauges["workers.running"] = float(self.workers.running())
            for slot in self.workers.slots:
                series.extend(SeriesStats(f"{prefix}worker.{slot.index}.{name}", COUNTER, tags,
                                          {"count": float(n), "rate": n / elapsed})
                              for name, n in sorted(slot.interval_counts.items()))
        gauges.update(self.manager.series_levels())  # held, carried, limit: max_series' view
        for forwarder in self.forwarders.values():
            for key, value in forwarder.stats().items():
                name = f"forwarder.{forwarder.name}.{key}"
                try:
                    kind = forwarder.stat_kind(key)
                except KeyError as exc:
                    if name not in self._undeclared_stats:  # a forwarder bug: say it once
                        self._undeclared_stats.add(name)
                        log.warning("forwarder %s: %s; not reported", forwarder.name, exc)
                    continue
                if kind == "level":
                    gauges[name] = float(value)
                    continue
                delta = value - self._forwarder_totals.get(name, 0)
                self._forwarder_totals[name] = value
                if delta:
                    series.append(SeriesStats(prefix + name, COUNTER, tags,
                                              {"count": float(delta), "rate": delta / elapsed}))
        series.extend(SeriesStats(prefix + name, GAUGE, tags, {"value": value})
                      for name, value in sorted(gauges.items()))
        return series

    # -- reload and stop --------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config file; apply it if valid, keep the running one if not.

        Build, validate, swap. Every forwarder whose section is unchanged keeps running, the
        same instance. New instances are built (their constructors validate) before anything
        changes; a relay forwarder's new instance starts before the receive path switches to
        it, so no line finds a relay closed; an aggregate forwarder's old instance is closed
        before its new one starts (both may want one spool), which is safe because only this
        thread hands out snapshots. A relay that says so (``close_before_successor``: it holds
        a spool) is closed first too: the receive path switches to its new instance, which only
        buffers datagrams (bounded, counted) until it starts after the old one has closed. A
        new instance that cannot start is closed and the old section is started again in its
        place (a relay's buffered datagrams handed to it)."""
        if self.config_path is None:
            log.warning("SIGHUP ignored: running on built-in defaults, no file to reload")
            return False
        systemd.notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
            # state_dir changes only on restart (_swap_config keeps the running one): the
            # forwarders are built, and compared, with the directory they would really use.
            context = forwarder_context({**new, "state_dir": self.config["state_dir"]},
                                        self.host)
            replacing = self._changed_sections(new, context)
            built = {name: build_forwarder(name, new["forwarders"][name], context)
                     for name in replacing}
            if self.route_overlay is not None:  # the overlay stays on top of the new file
                self.route_overlay.apply_to(built.values(), new)
        except Exception as exc:  # ConfigError, or a forwarder refusing its section
            for line in getattr(exc, "errors", [str(exc)]):
                log.error("reload refused, keeping the running config: %s: %s",
                          self.config_path, line)
            systemd.notify("READY=1")
            return False
        started_first = [f for name, f in built.items()
                         if name not in self.forwarders or (isinstance(f, RelayForwarder)
                                                            and not self._close_first(name, f))]
        try:
            for forwarder in started_first:
                forwarder.start()
        except Exception as exc:
            close_all(built.values())
            log.error("reload refused, keeping the running config: %s: forwarder %s cannot "
                      "start: %s", self.config_path, forwarder.name, exc)
            systemd.notify("READY=1")
            return False
        self._swap_config(new, context, built, [f.name for f in started_first])
        systemd.notify("READY=1")
        return True

    def _close_first(self, name: str, successor: RelayForwarder) -> bool:
        """Whether relay ``name``'s old instance must close before ``successor`` starts."""
        running = self.forwarders.get(name)
        return successor.close_before_successor() or (
            isinstance(running, RelayForwarder) and running.close_before_successor())

    def _changed_sections(self, new: Config, context: ForwarderContext) -> list[str]:
        """The forwarder sections of ``new`` that need a new instance."""
        if context != forwarder_context(self.config, self.host):
            return list(new["forwarders"])
        running = self.config["forwarders"]
        return [name for name, section in new["forwarders"].items()
                if name not in self.forwarders or running.get(name) != section]

    def _swap_config(self, new: Config, context: ForwarderContext,
                     built: dict[str, Forwarder], started: list[str]) -> None:
        needs_restart = [key for key in RESTART_ONLY_KEYS if new.get(key) != self.config.get(key)]
        old_config, old_forwarders = self.config, self.forwarders
        forwarders = {name: built.get(name) or old_forwarders[name]
                      for name in new["forwarders"]}
        timeout = float(new["shutdown_timeout"])
        with self.lock:
            assert self.pipeline is not None
            self.pipeline.publish_counts()
            self.config = {**new, **{k: old_config[k] for k in needs_restart}}
            self.forwarders = forwarders
            self._tagger = Tagger(new["agent"]["tags"], new["tag_precedence"])
            self.manager.reconfigure(self.config)
            self.manager.extra_stats = needed_stats(forwarders.values())
            self.pipeline = Pipeline(self.config, self.manager, self.stats, self._relays())
        if self.workers is not None:
            self.workers.reconfigure(self.config)
        # The receive path no longer reaches the old instances: close them.
        swapped = time.monotonic()
        for name, forwarder in old_forwarders.items():
            if forwarders.get(name) is not forwarder:
                forwarder.close(timeout)
        for name, forwarder in built.items():
            if name not in started:  # closed first: an aggregate, or a relay with a spool
                if isinstance(forwarder, RelayForwarder):
                    log.info("forwarder %s: starting %.0f ms after the receive path reached "
                             "it (its predecessor closed first); %d lines waited", name,
                             (time.monotonic() - swapped) * 1000, forwarder.buffered_lines)
                self._start_replacement(forwarder, old_config["forwarders"][name],
                                        forwarder_context(old_config, self.host))
        if not configure_logging(self.config["logging"]):
            self.stats.incr("log.reopen_failed")
            self.config["logging"] = old_config["logging"]
        kept = [name for name in forwarders if name not in built]
        changes = [f"kept {', '.join(kept)}" if kept else "",
                   f"rebuilt {', '.join(n for n in built if n in old_forwarders)}"
                   if any(n in old_forwarders for n in built) else "",
                   f"added {', '.join(n for n in built if n not in old_forwarders)}"
                   if any(n not in old_forwarders for n in built) else "",
                   f"removed {', '.join(n for n in old_forwarders if n not in forwarders)}"
                   if any(n not in forwarders for n in old_forwarders) else ""]
        self.last_reload = self.clock()
        log.info("reloaded %s; forwarders: %s", self.config_path,
                 "; ".join(c for c in changes if c) or "none")
        if needs_restart:
            log.warning("these keys change only on restart: %s", ", ".join(needs_restart))

    def _start_replacement(self, forwarder: Forwarder, old_section: dict[str, Any],
                           old_context: ForwarderContext) -> None:
        try:
            forwarder.start()
            return
        except Exception as exc:
            log.error("forwarder %s: the reloaded section cannot start (%s); starting its "
                      "previous section again", forwarder.name, exc)
        try:
            previous: Forwarder | None = build_forwarder(forwarder.name, old_section,
                                                         old_context)
        except Exception as exc:
            log.error("forwarder %s: its previous section cannot be built (%s)",
                      forwarder.name, exc)
            previous = None
        self._put_forwarder(forwarder.name, previous, old_section)
        if isinstance(forwarder, RelayForwarder) and isinstance(previous, RelayForwarder):
            refused = forwarder.hand_over_buffered(previous)  # the receive path left it
            if refused:
                log.error("forwarder %s: %d buffered lines refused by its previous section",
                          forwarder.name, refused)
        forwarder.close(0)  # before the previous one starts: it may want the same spool
        if previous is None:
            return
        try:
            previous.start()
        except Exception as exc:
            log.error("forwarder %s: its previous section cannot start either (%s); it is not "
                      "running", forwarder.name, exc)
            previous.close(0)
            self._put_forwarder(forwarder.name, None, old_section)

    def _put_forwarder(self, name: str, forwarder: Forwarder | None,
                       section: dict[str, Any]) -> None:
        """Run ``forwarder`` (None: nothing) as ``name``, with the receive path following."""
        with self.lock:
            if forwarder is None:
                self.forwarders.pop(name, None)
            else:
                self.forwarders[name] = forwarder
                self.config["forwarders"][name] = section
            assert self.pipeline is not None
            self.pipeline.publish_counts()
            self.pipeline = Pipeline(self.config, self.manager, self.stats, self._relays())

    def stop(self) -> int:
        """The shutdown sequence: stop listeners, final flush, drain forwarders by one deadline,
        report what was lost. A second stop signal meanwhile skips the draining."""
        systemd.notify("STOPPING=1")
        self._stop_admin_interfaces()
        if self.admin is not None:
            self.admin.stop()
        deadline = time.monotonic() + float(self.config["shutdown_timeout"])
        for listener in self.listeners:
            listener.stop()
        self.flush(final=True)
        lost: dict[str, int] = {}

        def drain() -> None:
            for name, forwarder in self.forwarders.items():
                lost[name] = forwarder.close(max(0.0, deadline - time.monotonic()))

        drainer = threading.Thread(target=drain, name="shutdown-drain", daemon=True)
        drainer.start()
        while drainer.is_alive():
            try:
                signum = self.signals.get(timeout=0.1)
            except queue.Empty:
                continue
            if signum in _STOP_SIGNALS:
                log.warning("second stop signal: exiting without waiting for forwarders")
                return 1
        total = sum(lost.values())
        if total:
            log.warning("stopped; undelivered: %s",
                        ", ".join(f"{name} {n}" for name, n in lost.items() if n))
        else:
            log.info("stopped; everything received was flushed and delivered")
        return 0


def run_daemon(config: Config, config_path: str | None) -> int:
    """Start a daemon in this process and run it until it stops; return the exit status."""
    if not configure_logging(config["logging"]):
        return 1  # the line saying why went to stderr
    pid_file = PidFile(config["pid_file"]) if config["pid_file"] else None
    try:
        if pid_file is not None:
            pid_file.claim(allow=predecessor_pid())  # a hot restart's predecessor may run
    except PidFileError as exc:
        log.error("cannot start: %s", exc.strerror)
        return 1
    try:
        return _run(config, config_path)
    finally:
        if pid_file is not None:
            pid_file.release()


def _run(config: Config, config_path: str | None) -> int:
    if config["mode"] == "global":  # a global-tier member: no listeners, no local aggregation
        from pystatsd.global_tier.member import run_global_member

        return run_global_member(config)
    daemon = Daemon(config, config_path)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except Exception as exc:  # a listener that cannot bind, a forwarder that cannot open
        log.error("cannot start: %s", exc)
        daemon._stop_admin_interfaces()
        if daemon.workers is not None:
            daemon.workers.kill()
        close_all(daemon.forwarders.values())
        return 1
    # Everything built so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise stall the receive thread for several milliseconds.
    gc.freeze()
    log.debug("pid %d", os.getpid())
    return daemon.run()

