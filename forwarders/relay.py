"""The base of forwarders that get raw lines: routing on the receive thread, sending on their own.

The receive thread calls :meth:`RelayForwarder.submit_lines` once per datagram (or TCP chunk)
with its lines, before aggregation. That call must never block for longer than a short lock
held for one datagram: it may route the lines (hash them to an owner, buffer them per
destination) but never touch a socket. The forwarder's own thread wakes every
``round_interval`` seconds and calls :meth:`RelayForwarder.send_round`, which moves what was
buffered to the backends. At close the thread keeps running rounds until nothing is pending or
the deadline passes; what is still pending then is discarded and counted.

Lines that the receive path made from JSON input (the relay wire is statsd) are submitted with
``from_json=True``, so a relay may refuse them; their bytes never come from a client unescaped
(the receive path's encoder refuses a sample whose name or tags would be statsd syntax).

Bounding: :meth:`RelayForwarder.admit` counts the datagrams waiting between the two threads and
refuses (and counts, ``dropped_queue_full``) past ``queue_size``; subclasses bound their own
per-destination buffers and count what those drop.

Runtime routes (optional): a relay whose destinations can change while it runs returns them
from :meth:`RelayForwarder.routes` (a list of JSON-able objects, each with a unique ``name``;
the default returns None: not supported) and takes a whole new list in
:meth:`RelayForwarder.apply_routes`, which validates it against the relay's own schema and
raises ``ValueError`` (changing nothing) when it is wrong. It may be called before
:meth:`~forwarders.base.Forwarder.start` and from any thread; from the next datagram on, lines go
the new way. The daemon keeps the operator's changes (the route overlay) and calls the hook at
start-up, after a reload and on each admin command; a relay never needs the daemon's internals.
The file's routes are the list under the section's :attr:`RelayForwarder.ROUTES_KEY`, each
named by its :attr:`RelayForwarder.ROUTE_NAME_KEY` field (:meth:`RelayForwarder.config_routes`
turns them into the hook's objects). A route change keeps every destination it does not change
(its connection, queue and spool); lines routed before the change are still delivered.

Reload order: by default a changed relay section's new instance starts before the old one is
closed, so no datagram finds a relay closed. A relay that holds something only one instance may
hold at a time (a disk spool's lock) answers True from
:meth:`RelayForwarder.close_before_successor` (the class default is
:attr:`RelayForwarder.RELOAD_CLOSE_FIRST`): the daemon then switches the receive path to the new
instance *before* starting it, closes the old one (which drains, or spools what it cannot
deliver), and only then starts the new one. Meanwhile the new instance's ``submit_lines`` only
keeps the datagrams (bounded by ``queue_size``, counted ``dropped_queue_full`` past it), as
:meth:`RelayForwarder.buffer_batch` does, and its first round sends them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from forwarders.base import Forwarder, ForwarderContext

__all__ = ["RelayForwarder"]


class RelayForwarder(Forwarder):
    """Subclasses implement :meth:`submit_lines`, :meth:`send_round`, :meth:`pending` and
    :meth:`discard`, and may override :meth:`open` and :meth:`shutdown`. In ``debug_mode``
    ``send_round`` must log what it would send and send nothing (the contract suite checks)."""

    KIND: ClassVar[str] = "relay"
    ROUND_INTERVAL: ClassVar[float] = 0.01
    """Seconds between send rounds unless the instance sets ``round_interval``."""
    ROUTES_KEY: ClassVar[str] = ""
    """The section key whose list the runtime routes are (empty: no runtime routes)."""
    ROUTE_NAME_KEY: ClassVar[str] = "name"
    """The field of one ``ROUTES_KEY`` entry that names it."""
    RELOAD_CLOSE_FIRST: ClassVar[bool] = False
    """At a reload, close the old instance before starting the new one (see the module)."""

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        super().__init__(name, config, context)
        self.round_interval = self.ROUND_INTERVAL
        self._max_waiting = int(self.config["queue_size"])
        self._submitted_datagrams = 0
        self._taken_datagrams = 0
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._inbox: list[list[bytes]] = []
        self._inbox_lines = 0
        self._inbox_lock = threading.Lock()

    # -- called by the daemon -------------------------------------------------------------
    def start(self) -> None:
        if not self.context.debug_mode:
            self.open()
        self._thread = threading.Thread(target=self._run, name=f"relay-{self.name}",
                                        daemon=True)
        self._thread.start()

    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        """Take one datagram's lines (receive thread); False when they were dropped."""
        raise NotImplementedError

    def close(self, timeout: float) -> int:
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            # The thread stops by the deadline; the extra half second lets a round in progress
            # finish rather than be abandoned mid-send.
            self._thread.join(max(0.0, self._deadline - time.monotonic()) + 0.5)
        left = self.discard()
        try:
            left += self.shutdown(max(0.0, self._deadline - time.monotonic()))
        except Exception:  # a backend failing at exit must not stop the other forwarders
            self.log.exception("forwarder %s failed while shutting down", self.name)
        return self._count_undelivered(left)

    def stats(self) -> dict[str, float]:
        return {**self.counters, "queued": self._submitted_datagrams - self._taken_datagrams}

    def routes(self) -> list[dict[str, Any]] | None:
        """The current destinations, one object each with a ``name``; None when this relay
        cannot change them at runtime (the default)."""
        return None

    def apply_routes(self, routes: list[dict[str, Any]]) -> None:
        """Replace the destinations by ``routes`` (validated here: ``ValueError`` names what is
        wrong and nothing changes); lines submitted after the return go the new way."""
        raise NotImplementedError(f"forwarder {self.name} has no runtime routes")

    @classmethod
    def config_routes(cls, section: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The routes a config ``section`` lists, as :meth:`routes` returns them: each entry
        of ``ROUTES_KEY`` with its ``name`` (``group<i>`` when it has none)."""
        entries = list(section.get(cls.ROUTES_KEY, [])) if cls.ROUTES_KEY else []
        named = []
        for index, entry in enumerate(entries):
            route = {k: v for k, v in entry.items() if k != cls.ROUTE_NAME_KEY}
            named.append({"name": str(entry.get(cls.ROUTE_NAME_KEY) or f"group{index}"),
                          **route})
        return named

    def close_before_successor(self) -> bool:
        """True when a reload must close this instance before its successor starts."""
        return self.RELOAD_CLOSE_FIRST

    def hand_over_buffered(self, successor: RelayForwarder) -> int:
        """Move the datagrams :meth:`buffer_batch` kept (never started: a successor that
        failed to start) to ``successor``; return how many lines it refused."""
        refused = 0
        for lines in self.take_batches():
            if not successor.submit_lines(lines):
                refused += len(lines)
        return refused

    # -- helpers for subclasses -----------------------------------------------------------
    def admit(self, lines: int) -> bool:
        """On the receive thread, before buffering a datagram of ``lines`` lines: False (and
        counted) when ``queue_size`` datagrams already wait for the sender thread."""
        if self._submitted_datagrams - self._taken_datagrams >= self._max_waiting:
            self.counters["dropped_queue_full"] += lines
            return False
        self._submitted_datagrams += 1
        return True

    def taken(self) -> None:
        """On the sender thread, having taken every buffered datagram: they no longer wait."""
        self._taken_datagrams = self._submitted_datagrams

    def buffer_batch(self, lines: list[bytes]) -> bool:
        """For a relay that routes on its own thread: keep one datagram's lines, whole, for
        the next round (admitted and counted as ``submitted``); False when refused."""
        if not self.admit(len(lines)):
            return False
        with self._inbox_lock:
            self._inbox.append(lines)
            self._inbox_lines += len(lines)
        self.counters["submitted"] += len(lines)
        return True

    def take_batches(self) -> list[list[bytes]]:
        """On the sender thread: every batch kept by :meth:`buffer_batch`, oldest first."""
        with self._inbox_lock:
            batches, self._inbox, self._inbox_lines = self._inbox, [], 0
            self.taken()
        return batches

    @property
    def buffered_lines(self) -> int:
        """Lines kept by :meth:`buffer_batch` that no round has taken yet."""
        return self._inbox_lines

    def discard_buffered(self) -> int:
        """Drop what :meth:`buffer_batch` kept; return how many lines that was."""
        return sum(len(lines) for lines in self.take_batches())

    # -- implemented by subclasses --------------------------------------------------------
    def send_round(self, now: float) -> None:
        """Move what is buffered towards the backends (the forwarder's thread)."""
        raise NotImplementedError

    def pending(self) -> int:
        """Lines buffered or queued and not yet sent."""
        raise NotImplementedError

    def discard(self) -> int:
        """Drop everything still pending; return how many lines that was."""
        raise NotImplementedError

    # -- internals ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.round_interval)
            try:
                self.send_round(time.monotonic())
                if stopping:
                    self._drain()
                    return
            except Exception:  # a bug in one round must not end relaying for good
                self.counters["send_errors"] += 1
                self.log.exception("relay %s: send round failed", self.name)
                if stopping:
                    return

    def _drain(self) -> None:
        while self.pending() and time.monotonic() < self._deadline:
            time.sleep(min(self.round_interval, 0.01))
            self.send_round(time.monotonic())
