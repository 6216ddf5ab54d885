"""The daemon's receive workers: their sockets, their processes, the flush round, restarts.

The parent binds each UDP and TCP listener once per worker with ``SO_REUSEPORT``
(``listeners.bind_group``) and keeps every socket open for its whole life: worker ``i`` is
handed member ``i`` of each group (``pass_fds``), so a worker that dies or restarts, a reload,
and a hot restart (which passes the whole groups on) never close the port, and what arrives
for a dead worker waits in its socket's buffer for the next one.

Workers are spawned (``python -m pystatsd.workers.worker``), not forked: the parent runs
forwarder threads (librdkafka's among them) whose locks a fork could copy held, and the same
code then serves the first start, a restart and a hot restart's successor. One supervisor
thread per worker waits for its process; when it dies outside a stop, the loss is counted
(``workers.restarts``, ``workers.lost_payloads``, ``workers.lost_series``: what it held since
the last flush, and a swapped table whose partials never arrived, which it kept in a shared
page), a warning logged, and it is started again (at most once a second)."""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson

from pystatsd.inherited_sockets import SOCKETS_ENV, socket_key
from pystatsd.listeners import bind_group
from pystatsd.selfstats import SelfStats
from pystatsd.workers.merge import TableMerge
from pystatsd.workers.worker import (
    HELD_PAYLOADS,
    HELD_SERIES,
    SWAPPED_PAYLOADS,
    SWAPPED_SERIES,
    held_counts,
)

log = logging.getLogger("pystatsd.workers")

START_TIMEOUT = 60.0
"""Seconds a worker has to import, bind its listeners' threads and answer ``ready``."""
FLUSH_TIMEOUT = 60.0
"""Seconds a worker has to answer a flush before it is killed (and restarted, counted)."""
RESTART_PAUSE = 1.0


class WorkerSlot:
    """Worker ``index``: its sockets, its current process, what it reported."""

    def __init__(self, index: int, sockets: list[socket.socket]) -> None:
        self.index = index
        self.sockets = sockets
        self.held_fd = os.memfd_create(f"pystatsd-worker-{index}")
        os.ftruncate(self.held_fd, mmap.PAGESIZE)
        self.held = held_counts(mmap.mmap(self.held_fd, mmap.PAGESIZE))
        self.process: subprocess.Popen[bytes] | None = None
        self.control: Connection | None = None
        self.lock = threading.Lock()
        """Held by whoever talks to the process: the main thread's flush, the supervisor's
        restart."""
        self.started_at = 0.0
        self.restarts = 0
        self.counters: dict[str, int] = {}
        self.interval_counts: dict[str, int] = {}

    def describe(self) -> dict[str, Any]:
        process = self.process
        return {"index": self.index, "pid": process.pid if process else None,
                "alive": process is not None and process.poll() is None,
                "restarts": self.restarts, "counters": dict(sorted(self.counters.items()))}


class WorkerPool:
    def __init__(self, count: int, specs: list[dict[str, Any]], config: dict[str, Any],
                 stats: SelfStats) -> None:
        self.count = count
        self.specs = specs
        self._configured = specs
        """As in the config (a port of 0 stays 0): the keys of a hot restart's hand-over."""
        self.config = config
        self.stats = stats
        self.slots: list[WorkerSlot] = []
        self._stopping = threading.Event()
        self._supervisors: list[threading.Thread] = []

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind every group and start every worker; raise (having closed all) on a failure."""
        groups = []
        try:
            for spec in self.specs:
                groups.append(bind_group(spec, self.count))
        except Exception:
            for group in groups:
                for sock in group:
                    sock.close()
            raise
        self.specs = [{**spec, "port": group[0].getsockname()[1]}
                      for spec, group in zip(self.specs, groups, strict=True)]
        self.slots = [WorkerSlot(i, [group[i] for group in groups]) for i in range(self.count)]
        try:
            for slot in self.slots:
                self._spawn(slot)
        except Exception:
            self.kill()
            raise
        for slot in self.slots:
            thread = threading.Thread(target=self._supervise, args=(slot,),
                                      name=f"worker-{slot.index}", daemon=True)
            thread.start()
            self._supervisors.append(thread)

    @property
    def addresses(self) -> list[str]:
        return [f"{spec['protocol']} {spec['address']}:{spec['port']}" for spec in self.specs]

    def _spawn(self, slot: WorkerSlot) -> None:
        began = time.monotonic()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {socket_key(spec["protocol"], spec["address"], spec["port"]): sock.fileno()
               for spec, sock in zip(self.specs, slot.sockets, strict=True)}
        env = {**os.environ, SOCKETS_ENV: orjson.dumps(fds).decode()}
        command = [sys.executable, "-m", "pystatsd.workers.worker", str(slot.index),
                   str(theirs.fileno()), str(slot.held_fd)]
        try:
            process = subprocess.Popen(command, env=env, pass_fds=[theirs.fileno(),
                                                                   slot.held_fd, *fds.values()])
        finally:
            theirs.close()
        control = Connection(ours.detach())
        try:
            control.send_bytes(pickle.dumps(("config", self.config, self.specs)))
            if not control.poll(START_TIMEOUT) or control.recv_bytes() != b"ready":
                raise OSError("did not say it was ready")
        except (OSError, EOFError) as exc:
            process.kill()
            process.wait()
            control.close()
            raise RuntimeError(f"receive worker {slot.index} did not start: {exc}") from exc
        slot.process, slot.control, slot.started_at = process, control, time.monotonic()
        log.info("receive worker %d started: pid %d (ready in %.2f s)", slot.index, process.pid,
                 time.monotonic() - began)

    def _supervise(self, slot: WorkerSlot) -> None:
        while not self._stopping.is_set():
            process = slot.process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            with slot.lock:
                if slot.process is not process:  # replaced meanwhile (by a flush that timed out)
                    continue
                self._count_loss(slot, code)
                pause = RESTART_PAUSE - (time.monotonic() - slot.started_at)
                if pause > 0:
                    time.sleep(pause)
                while not self._stopping.is_set():
                    try:
                        self._spawn(slot)
                        break
                    except Exception as exc:
                        log.error("%s; trying again in %gs", exc, RESTART_PAUSE)
                        time.sleep(RESTART_PAUSE)

    def _take_loss(self, slot: WorkerSlot) -> tuple[int, int]:
        """Count what a dead worker held, since the last flush and in a swapped table whose
        partials never arrived, as lost; return it (payloads, series)."""
        held = slot.held
        payloads = held[HELD_PAYLOADS] + held[SWAPPED_PAYLOADS]
        series = held[HELD_SERIES] + held[SWAPPED_SERIES]
        for word in (HELD_PAYLOADS, HELD_SERIES, SWAPPED_PAYLOADS, SWAPPED_SERIES):
            held[word] = 0
        slot.interval_counts = {}
        self.stats.incr("workers.lost_payloads", payloads)
        self.stats.incr("workers.lost_series", series)
        return payloads, series

    def _count_loss(self, slot: WorkerSlot, code: int) -> None:
        payloads, series = self._take_loss(slot)
        if slot.control is not None:
            slot.control.close()
            slot.control = None
        slot.restarts += 1
        self.stats.incr("workers.restarts")
        how = f"signal {-code}" if code < 0 else f"status {code}"
        log.warning("receive worker %d (pid %d) died (%s): restarting it; lost what it held "
                    "since the last flush: %d payloads, %d series", slot.index,
                    slot.process.pid if slot.process else 0, how, payloads, series)

    # -- the flush round ----------------------------------------------------------------
    def collect(self, merge: TableMerge, final: bool = False, drain: bool = True) -> None:
        """Every worker's interval into ``merge`` (their counters into the daemon's stats).
        ``final``: the workers stop (``drain``: reading what their sockets still buffer)."""
        command = pickle.dumps(("stop", drain) if final else ("flush",))
        if final:
            self._stopping.set()
        asked = []
        for slot in self.slots:
            slot.lock.acquire()
            slot.interval_counts = {}  # a worker that does not answer reported nothing
            try:
                if slot.control is not None:
                    slot.control.send_bytes(command)
                    asked.append(slot)
                    continue
            except OSError:
                pass
            slot.lock.release()
        for slot in asked:
            try:
                data = self._answer(slot, "a flush")
                if data is None:  # died mid-flush: its supervisor counts it, but not at a stop
                    if final:
                        payloads, series = self._take_loss(slot)
                        log.warning("receive worker %d died at the final flush: lost %d "
                                    "payloads, %d series", slot.index, payloads, series)
                    continue
                # Received whole: the swapped table is the parent's now, no longer a loss.
                slot.held[SWAPPED_PAYLOADS] = slot.held[SWAPPED_SERIES] = 0
            finally:
                slot.lock.release()
            counts = merge.add_encoded(data)
            slot.interval_counts = counts
            for name, count in counts.items():
                self.stats.incr(name, count)
                slot.counters[name] = slot.counters.get(name, 0) + count
        if final:
            for slot in self.slots:
                if slot.process is not None:
                    try:
                        slot.process.wait(5)
                    except subprocess.TimeoutExpired:
                        slot.process.kill()

    def peek(self, kinds: tuple[str, ...]) -> list[bytes]:
        """Every live worker's current series of ``kinds`` (``merge.encode_view``), its table
        left in place. A flush or a restart in progress is waited for (a restarted worker
        holds nothing yet); a worker that does not answer within ``FLUSH_TIMEOUT`` is killed,
        as at a flush (its answer, late, would otherwise be taken for the next flush's)."""
        return self._ask_each(("peek", kinds))

    def forget(self, keys: list[Any]) -> None:
        """The console's ``del*``: every worker drops these series from its current table."""
        self._ask_each(("forget", keys))

    def _ask_each(self, command: tuple[Any, ...]) -> list[bytes]:
        """Each live worker's answer to ``command``, one worker at a time."""
        data = pickle.dumps(command)
        answers = []
        for slot in self.slots:
            with slot.lock:
                if slot.control is None:
                    continue
                try:
                    slot.control.send_bytes(data)
                except OSError:  # died: its supervisor counts it
                    continue
                answer = self._answer(slot, f"a {command[0]}")
                if answer is not None:
                    answers.append(answer)
        return answers

    @staticmethod
    def _answer(slot: WorkerSlot, what: str) -> bytes | None:
        """The worker's answer to ``what``, under its slot's lock; None if it died (its
        supervisor counts it) or did not answer within ``FLUSH_TIMEOUT`` (then it is killed)."""
        try:
            assert slot.control is not None
            if not slot.control.poll(FLUSH_TIMEOUT):
                raise OSError(f"no answer to {what} within {FLUSH_TIMEOUT:g}s")
            return slot.control.recv_bytes()
        except (OSError, EOFError) as exc:
            if not isinstance(exc, EOFError) and slot.process is not None:
                log.error("receive worker %d: %s; killing it", slot.index, exc)
                slot.process.kill()
            return None

    def worker_counters(self) -> list[tuple[int, dict[str, int]]]:
        """Each worker's self-counters since start, as its flushes reported them (what the
        daemon's own counters hold summed)."""
        return [(slot.index, dict(slot.counters)) for slot in self.slots]

    def reconfigure(self, config: dict[str, Any]) -> None:
        """A reload: every worker takes the new config (a worker started later gets it too)."""
        self.config = config
        command = pickle.dumps(("reload", config))
        for slot in self.slots:
            with slot.lock:
                try:
                    if slot.control is not None:
                        slot.control.send_bytes(command)
                        if slot.control.poll(FLUSH_TIMEOUT):
                            slot.control.recv_bytes()
                except (OSError, EOFError):
                    pass  # died: restarted with the new config

    def inherited_fds(self) -> dict[str, int]:
        """Every group member, for a hot restart's successor (``inherited_socket``)."""
        return {socket_key(spec["protocol"], spec["address"], spec["port"], slot.index):
                slot.sockets[n].fileno()
                for slot in self.slots for n, spec in enumerate(self._configured)}

    def running(self) -> int:
        return sum(1 for slot in self.slots
                   if slot.process is not None and slot.process.poll() is None)

    def describe(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in self.slots]

    def kill(self) -> None:
        self._stopping.set()
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()
