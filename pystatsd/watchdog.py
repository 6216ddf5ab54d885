"""Is the daemon making progress? The answer feeds systemd's watchdog and ``/readyz``.

One thread asks each part for a sign of life at every tick and judges the answers:

* the main loop: a wake-up (signal number 0) is put on its queue; every pass of the loop
  records the time (``Daemon.last_loop``), so a loop stuck in a flush or a reload stops
  answering;
* each receive thread: a UDP listener gets an empty datagram, which queues behind what the
  socket holds and which the loop answers; the TCP listener's event loop gets a callback.
  Bytes still coming in count as progress too, so a busy listener whose socket buffer drops
  the probe is not taken for a wedged one;
* the flush: the last one must be at most two intervals (plus the stall time) old.

``WATCHDOG=1`` goes to systemd every half ``WatchdogSec`` only while every part answered
within the stall time; a part that stops is logged once, and systemd restarts the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pystatsd import systemd

if TYPE_CHECKING:
    from pystatsd.daemon import Daemon

log = logging.getLogger("pystatsd.watchdog")

MAIN_LOOP_PROBE = 0
"""What the watchdog puts on the daemon's signal queue: no signal, only a wake-up."""
DEFAULT_TICK = 1.0
DEFAULT_STALL = 10.0
"""Without systemd's watchdog: how often parts are asked, and the silence after which one is
reported stuck (``/readyz``)."""


class Watchdog:
    def __init__(self, daemon: Daemon, interval: float | None = None,
                 notify: Callable[[str], bool] = systemd.notify,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._daemon = daemon
        self._notify = notify
        self._clock = clock
        self.interval = interval
        """systemd's WatchdogSec in seconds, or None: then nothing is pinged."""
        self.ping_every = interval / 2 if interval else None
        self.tick = min(DEFAULT_TICK, self.ping_every / 2) if self.ping_every else DEFAULT_TICK
        self.stall_after = (max(self.ping_every, 3 * self.tick) if self.ping_every
                            else DEFAULT_STALL)
        self.pings = 0
        self.last_received = daemon.clock()
        """Wall time at which some listener last received bytes (Etsy's last_msg_seen)."""
        self._bytes_seen: dict[int, int] = {}
        self._bytes_moved: dict[int, float] = {}
        self._reported: set[str] = set()
        self._last_ping = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        if self.ping_every:
            log.info("systemd watchdog: %.3gs; pinging every %.3gs while every part of the "
                     "daemon makes progress", self.interval, self.ping_every)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def stuck(self) -> dict[str, float]:
        """The parts that have shown no progress within ``stall_after`` seconds, with the
        seconds since they last did."""
        now = self._clock()
        daemon = self._daemon
        found = {}
        if now - daemon.last_loop > self.stall_after:
            found["main loop"] = now - daemon.last_loop
        for index, listener in enumerate(daemon.listeners):
            alive = max(listener.last_alive, self._bytes_moved.get(index, 0.0))
            if now - alive > self.stall_after:
                host, port = listener.address
                found[f"{listener.spec['protocol']} listener {host}:{port}"] = now - alive
        flush_age = daemon.clock() - daemon.last_flush_at
        if flush_age > 2 * float(daemon.config["flush_interval"]) + self.stall_after:
            found["flush"] = flush_age
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self._observe()
            stuck = self.stuck()
            self._report(stuck)
            now = self._clock()
            if self.ping_every and not stuck and now - self._last_ping >= self.ping_every:
                if self._notify("WATCHDOG=1"):
                    self.pings += 1
                self._last_ping = now
            self._probe()

    def _observe(self) -> None:
        now = self._clock()
        for index, listener in enumerate(self._daemon.listeners):
            received = listener.bytes_received
            if received != self._bytes_seen.get(index):
                if index in self._bytes_seen:
                    self.last_received = self._daemon.clock()
                self._bytes_seen[index] = received
                self._bytes_moved[index] = now

    def _probe(self) -> None:
        self._daemon.signals.put(MAIN_LOOP_PROBE)
        for listener in self._daemon.listeners:
            listener.probe()

    def _report(self, stuck: dict[str, float]) -> None:
        for part, silent in stuck.items():
            if part not in self._reported:  # once per episode, not once per tick
                log.error("%s: %s has made no progress for %.1fs",
                          "watchdog pings stopped" if self.ping_every else "stuck", part, silent)
        for part in self._reported - set(stuck):
            log.warning("%s makes progress again", part)
        self._reported = set(stuck)
