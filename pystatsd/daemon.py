"""The daemon: owns listeners, pipeline, metric manager and forwarders, and runs the main loop.

Signals only record (their handlers put the number on a queue); the main loop acts:

    TERM, INT   graceful stop: stop listening, flush, drain forwarders within shutdown_timeout;
                a second TERM/INT during that stops at once
    HUP         reload the config file: build, validate, swap; an invalid file changes nothing
    USR1        reopen the log file (logrotate)
"""

from __future__ import annotations

import gc
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forwarders import Forwarder, ForwarderContext, load_forwarder_class
from pystatsd import __version__, systemd
from pystatsd.admin import SOCKET_NAME, AdminServer
from pystatsd.aggregation import MetricMgr
from pystatsd.config import Config, listeners, load_config
from pystatsd.ingest import Pipeline
from pystatsd.listeners import TcpListener, UdpListener, open_listeners
from pystatsd.logsetup import configure_logging
from pystatsd.sample import COUNTER, GAUGE
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import SeriesStats, Snapshot
from pystatsd.tagging import Tagger

log = logging.getLogger("pystatsd.daemon")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED_SIGNALS = (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1)


def build_forwarders(config: Config, host: str) -> list[Forwarder]:
    """Instantiate (not start) every forwarder the config names."""
    context = ForwarderContext(debug_mode=config["debug_mode"], host=host,
                               state_dir=Path(config["state_dir"]))
    built = []
    for name, section in config["forwarders"].items():
        cls = load_forwarder_class(section.get("type", name))
        built.append(cls(name, section, context))
    return built


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
        self.manager = MetricMgr(config)
        self.forwarders: list[Forwarder] = []
        self.pipeline: Pipeline | None = None
        self.listeners: list[UdpListener | TcpListener] = []
        self._tagger = Tagger(config["agent"]["tags"], config["tag_precedence"])
        self._interval_started = 0.0
        self._forwarder_totals: dict[str, float] = {}
        self._started_at = self.clock()
        self._last_flush: dict[str, float] = {}
        self.admin: AdminServer | None = None

    # -- start-up ---------------------------------------------------------------------
    def start(self) -> None:
        """Start forwarders, bind listeners and begin receiving; raise on any failure."""
        self.forwarders = build_forwarders(self.config, self.host)
        for forwarder in self.forwarders:
            forwarder.start()
        self.pipeline = Pipeline(self.config, self.manager, self.stats, self._relays())
        self.listeners = open_listeners(listeners(self.config), self._deliver, self.stats)
        self._interval_started = self.clock()
        for listener in self.listeners:
            listener.start()
            host, port = listener.address
            log.info("listening on %s %s:%d", listener.spec["protocol"], host, port)
        self._start_admin()
        log.info("pystatsd started: mode %s, flush every %ss, forwarders: %s",
                 self.config["mode"], self.config["flush_interval"],
                 ", ".join(f.name for f in self.forwarders) or "none")
        systemd.notify("READY=1")

    def _start_admin(self) -> None:
        path = Path(self.config["state_dir"]) / SOCKET_NAME
        try:
            self.admin = AdminServer(path, self.describe)
        except OSError as exc:  # status is a convenience: never a reason not to run
            log.warning("no admin socket (pystatsd --status will not answer): %s: %s",
                        path, exc.strerror or exc)
            return
        self.admin.start()

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
                          for host, port in [listener.address]],
            "counters": dict(sorted(counters.items())),
            "forwarders": {f.name: {"type": type(f).__name__, **f.stats()}
                           for f in self.forwarders},
        }

    def _relays(self) -> list[Forwarder]:
        return [f for f in self.forwarders if f.RELAY]

    def _deliver(self, payload: bytes) -> None:
        with self.lock:
            assert self.pipeline is not None
            self.pipeline.ingest(payload)

    # -- main loop --------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, self._record_signal)

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
            if signum in _STOP_SIGNALS:
                log.info("received %s: stopping", signal.Signals(signum).name)
                return self.stop()
            if signum == signal.SIGHUP:
                self.reload()
                interval = float(self.config["flush_interval"])
                deadline = self._next_deadline(self.clock(), interval)
            elif signum == signal.SIGUSR1:
                configure_logging(self.config["logging"])
                log.info("log reopened")
            now = self.clock()
            if now >= deadline:
                missed = int((now - deadline) // interval)
                if missed:
                    # A stalled process (SIGSTOP, swap) flushes once, not once per lost interval.
                    self.stats.incr("flush.missed", missed)
                    log.warning("missed %d flush deadlines", missed)
                self.flush()
                deadline = self._next_deadline(now, interval)

    @staticmethod
    def _next_deadline(now: float, interval: float) -> float:
        return (math.floor(now / interval) + 1) * interval

    # -- flushing ---------------------------------------------------------------------
    def flush(self) -> Snapshot:
        """Close the current interval and hand its snapshot to every aggregate forwarder."""
        with self.lock:
            if self.pipeline is not None:
                self.pipeline.publish_counts()  # the receive counts land in this interval
            table = self.manager.swap()
            now = self.clock()
            counts = self.stats.take()
        started, self._interval_started = self._interval_started, now
        elapsed = max(now - started, 1e-9)
        interval = float(self.config["flush_interval"])
        aligned_start = math.floor(started / interval) * interval
        series = self.manager.finish(table, elapsed)
        if self.config["self_metrics"]["enabled"]:
            series.extend(self._self_metrics(counts, elapsed, len(series)))
        snapshot = Snapshot(aligned_start, elapsed, self.host, series)
        self.stats.incr("flush.count")
        self._last_flush = {"at": now, "interval_start": aligned_start,
                            "interval_seconds": elapsed, "series": len(snapshot.series)}
        for forwarder in self.forwarders:
            if not forwarder.RELAY:
                forwarder.submit(snapshot)
        return snapshot

    def _self_metrics(self, counts: dict[str, int], elapsed: float,
                      flushed_series: int) -> list[SeriesStats]:
        prefix = self.config["self_metrics"]["prefix"]
        tags = self._tagger.apply(())
        series = [SeriesStats(prefix + name, COUNTER, tags, {"count": n, "rate": n / elapsed})
                  for name, n in sorted(counts.items())]
        gauges: dict[str, float] = {"series": float(flushed_series)}
        for forwarder in self.forwarders:
            for key, value in forwarder.stats().items():
                name = f"forwarder.{forwarder.name}.{key}"
                if key.endswith(forwarder.GAUGE_KEYS):
                    gauges[name] = float(value)
                    continue
                delta = value - self._forwarder_totals.get(name, 0)
                self._forwarder_totals[name] = value
                if delta:
                    series.append(SeriesStats(prefix + name, COUNTER, tags,
                                              {"count": delta, "rate": delta / elapsed}))
        series.extend(SeriesStats(prefix + name, GAUGE, tags, {"value": value})
                      for name, value in sorted(gauges.items()))
        return series

    # -- reload and stop --------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config file; apply it if valid, keep the running one if not."""
        if self.config_path is None:
            log.warning("SIGHUP ignored: running on built-in defaults, no file to reload")
            return False
        systemd.notify("RELOADING=1")
        started: list[Forwarder] = []
        try:
            new = load_config(self.config_path)
            for forwarder in build_forwarders(new, self.host):
                forwarder.start()
                started.append(forwarder)
        except Exception as exc:  # ConfigError, or a forwarder that cannot be built or opened
            for forwarder in started:
                forwarder.close(0)
            for line in getattr(exc, "errors", [str(exc)]):
                log.error("reload refused, keeping the running config: %s", line)
            systemd.notify("READY=1")
            return False
        needs_restart = [key for key in ("listeners", "bind_address", "bind_port", "mode",
                                         "state_dir")
                         if new.get(key) != self.config.get(key)]
        old_forwarders = self.forwarders
        with self.lock:
            self.config = {**new, **{k: self.config[k] for k in needs_restart}}
            self.forwarders = started
            self._tagger = Tagger(new["agent"]["tags"], new["tag_precedence"])
            self.manager.reconfigure(self.config)
            assert self.pipeline is not None
            self.pipeline.publish_counts()
            self.pipeline = Pipeline(self.config, self.manager, self.stats, self._relays())
        for forwarder in old_forwarders:
            forwarder.close(float(self.config["shutdown_timeout"]))
        configure_logging(self.config["logging"])
        if needs_restart:
            log.warning("reloaded; these keys change only on restart: %s", ", ".join(needs_restart))
        else:
            log.info("reloaded %s", self.config_path)
        systemd.notify("READY=1")
        return True

    def stop(self) -> int:
        """The shutdown sequence: stop listeners, final flush, drain forwarders by one deadline,
        report what was lost. A second stop signal meanwhile skips the draining."""
        systemd.notify("STOPPING=1")
        if self.admin is not None:
            self.admin.stop()
        deadline = time.monotonic() + float(self.config["shutdown_timeout"])
        for listener in self.listeners:
            listener.stop()
        self.flush()
        lost: dict[str, int] = {}

        def drain() -> None:
            for forwarder in self.forwarders:
                lost[forwarder.name] = forwarder.close(max(0.0, deadline - time.monotonic()))

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
    configure_logging(config["logging"])
    daemon = Daemon(config, config_path)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except Exception as exc:  # a listener that cannot bind, a forwarder that cannot open
        log.error("cannot start: %s", exc)
        for forwarder in daemon.forwarders:
            forwarder.close(0)
        return 1
    # Everything built so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise stall the receive thread for several milliseconds.
    gc.freeze()
    log.debug("pid %d", os.getpid())
    return daemon.run()

