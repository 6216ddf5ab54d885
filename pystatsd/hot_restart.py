"""Hot restart (SIGUSR2): a successor takes the sockets and the interval in flight; no loss.

The running daemon (the *predecessor*) starts its successor with its own command line
(``sys.executable`` and ``sys.orig_argv``: the code now on disk), passing it the listening
sockets as inherited descriptors (:data:`SOCKETS_ENV`, a JSON map ``proto|address|port`` ->
descriptor) and one end of a Unix stream socketpair (:data:`CHANNEL_ENV`). On that channel
both sides write frames: one type byte and a 4-byte length, then the body.

1. The successor binds nothing: :func:`inherited_socket` hands the listeners its descriptors.
   It starts its relay forwarders that own no files and its receive threads (both processes
   now read the same sockets), and sends ``R`` (ready). Its other forwarders (aggregate ones,
   relays with a spool) are not started yet: the old ones may hold a file lock (a spool's
   flock) and still have data to deliver.
2. The predecessor, on ``R`` within ``hot_restart_timeout``, stops its admin interfaces and,
   under the ingest lock, swaps its current interval's table out and puts a :class:`Forward`
   in place of its pipeline: whatever its receive threads still take is sent over the channel
   (``D``, one payload a frame, with the listener's options) instead of being aggregated. It sends
   the table and the carried gauges and traces (``S``, a pickle: between our own processes,
   never client bytes), stops reading (see :func:`stop_shared_udp`), sends ``E``, waits for
   the successor's ``A``, tells systemd ``MAINPID=`` the successor, closes its forwarders
   (delivering what they hold) and exits.
3. The successor merges ``S`` into its own current interval (counters add, the newer gauge
   wins, sets unite, timer samples join) and takes the predecessor's interval start, so the
   interval spanning the hand-over is reported once, whole, by the successor. ``D`` payloads are
   ingested as if received. After ``E`` it waits for the channel to close (the predecessor has
   exited: its forwarders are closed), then starts its remaining forwarders and admin
   interfaces and tells systemd ``MAINPID=`` and ``READY=1``.

A successor that exits, or sends nothing within the deadline, is stopped (TERM, then KILL) and
the predecessor keeps serving as if nothing happened: it never stopped reading."""

from __future__ import annotations

import logging
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import orjson

from forwarders import Forwarder, RelayForwarder
from pystatsd import systemd
from pystatsd.aggregation import MetricMgr
from pystatsd.distribution import Distribution, extend_samples
from pystatsd.ingest import Pipeline
from pystatsd.inherited_sockets import SOCKETS_ENV, socket_key
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE

if TYPE_CHECKING:
    from pystatsd.daemon import Daemon
    from pystatsd.listeners import UdpListener

log = logging.getLogger("pystatsd.hot_restart")

CHANNEL_ENV = "PYSTATSD_HANDOVER_FD"
PREDECESSOR_ENV = "PYSTATSD_PREDECESSOR_PID"

READY, STATE, DATA, END, ACK = b"R", b"S", b"D", b"E", b"A"
_HEADER = struct.Struct("!cI")

def predecessor_pid() -> int | None:
    """The pid of the daemon handing over to this process, while it may still run."""
    value = os.environ.get(PREDECESSOR_ENV)
    return int(value) if value else None


# -- the channel --------------------------------------------------------------------------
class Channel:
    """Frames over the stream socketpair; writes from several threads are serialised."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._write = threading.Lock()
        self._buffer = b""

    def send(self, kind: bytes, body: bytes = b"") -> None:
        with self._write:
            self.sock.sendall(_HEADER.pack(kind, len(body)) + body)

    def receive(self, deadline: float) -> tuple[bytes, bytes] | None:
        """The next frame, or None at end of stream or when the deadline passes."""
        while True:
            if len(self._buffer) >= _HEADER.size:
                kind, length = _HEADER.unpack_from(self._buffer)
                end = _HEADER.size + length
                if len(self._buffer) >= end:
                    body = self._buffer[_HEADER.size:end]
                    self._buffer = self._buffer[end:]
                    return kind, body
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], min(remaining, 0.1))[0]:
                if remaining <= 0:
                    return None
                continue
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self._buffer += chunk


class Forward(Pipeline):
    """Stands in for the predecessor's pipeline once the interval is handed over: every payload
    its receive threads still take goes to the successor, which ingests it."""

    def __init__(self, channel: Channel) -> None:  # no super().__init__: nothing aggregates here
        self.channel = channel
        self.forwarded = 0

    def ingest(self, payload: bytes, *options: Any) -> None:
        # The listener's options (input format, ...) travel with the payload, whatever they are
        self.channel.send(DATA, pickle.dumps((payload, options), pickle.HIGHEST_PROTOCOL))
        self.forwarded += 1

    def ingest_batch(self, payloads: list[bytes], failed: Callable[[bytes], object],
                     absolute_gauges: bool = False) -> None:
        # Each payload as its own frame, with the options the per-payload delivery passes.
        for payload in payloads:
            try:
                self.ingest(payload, "statsd", absolute_gauges, None)
            except Exception:
                failed(payload)

    def publish_counts(self) -> None:
        pass


# -- the interval's state -----------------------------------------------------------------
def export_state(manager: MetricMgr, table: Any, interval_started: float,
                 counts: dict[str, int]) -> bytes:
    """Everything the successor needs to report the interval in flight: the swapped-out
    table's cells, the carried gauges and traces, the interval's start, the self-counters."""
    return pickle.dumps({"series": table.series, "gauges": manager._gauges,
                         "traces": manager._traces, "interval_started": interval_started,
                         "counts": counts}, protocol=pickle.HIGHEST_PROTOCOL)


def merge_state(manager: MetricMgr, state: dict[str, Any]) -> None:
    """Merge the predecessor's interval into ``manager``'s current one (under the ingest
    lock). The predecessor's samples are the older ones: a gauge set here since wins."""
    series = manager._table.series
    for key, older in state["series"].items():
        newer = series.get(key)
        if newer is None:
            series[key] = older
            continue
        kind = key[1]
        if kind in (COUNTER, TRACE):
            newer[0] += older[0]
        elif kind == GAUGE:
            if newer[0] is None:
                newer[0] = older[0]
                newer[1] += older[1]
        elif kind == SET:
            newer.update(older)
        elif kind in (TIMER, HISTOGRAM):
            _merge_distribution(newer, older, manager.accuracy)
    for key, carried in state["gauges"].items():
        manager._gauges.setdefault(key, carried)
    for key, carried in state["traces"].items():
        manager._traces.setdefault(key, carried)
    manager.epoch += 1  # the fast path's cached cells must be looked up again


def _merge_distribution(newer: Distribution, older: Distribution, accuracy: float) -> None:
    if newer.sketch is None and older.sketch is None:
        extend_samples(newer.values, older.values)  # in place: the fast path holds this array
        newer.weighted.extend(older.weighted)
        return
    older.fold(accuracy)
    newer.fold(accuracy)
    if newer.sketch is None:
        for name in ("sketch", "count", "total", "low", "high", "mean", "m2"):
            setattr(newer, name, getattr(older, name))
        return
    assert older.sketch is not None
    newer.sketch.merge(older.sketch)
    merged = newer.count + older.count
    delta = older.mean - newer.mean
    newer.m2 += older.m2 + delta * delta * newer.count * older.count / merged
    newer.mean += delta * older.count / merged
    newer.count = merged
    newer.total += older.total
    newer.low = min(newer.low, older.low)
    newer.high = max(newer.high, older.high)


# -- stopping to read a socket the successor reads too -------------------------------------
def stop_shared_udp(listener: UdpListener, timeout: float) -> bool:
    """End the receive thread of a UDP socket that the successor now reads as well, touching
    nothing the two share: no ``shutdown`` and no ``O_NONBLOCK`` (both act on the socket, so on
    the successor's reading too). The thread's descriptor is pointed at a private socket
    (``dup2``): its next ``recv`` reads that one, where an empty datagram ends the loop; a
    ``recv`` already waiting on the shared socket returns with the next datagram, which is
    forwarded like every other. Empty datagrams to the shared port hurry that along (the
    successor takes those that reach it as the watchdog's probes), each from a new source port
    so that one reaches this socket of a ``SO_REUSEPORT`` group. True when it ended."""
    shared = listener._sock
    loopback = "127.0.0.1" if shared.family == socket.AF_INET else "::1"
    private = socket.socket(shared.family, socket.SOCK_DGRAM)
    private.bind((loopback, 0))
    listener._stopping.set()
    host, port = listener.address
    target = ({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port)
    thread = listener._thread
    deadline = time.monotonic() + timeout
    os.dup2(private.fileno(), shared.fileno())
    while thread.is_alive() and time.monotonic() < deadline:
        private.sendto(b"", private.getsockname())
        # A new source port each time: in a receive workers' SO_REUSEPORT group the kernel
        # picks the member by it, and only this member's datagram wakes this thread.
        with socket.socket(shared.family, socket.SOCK_DGRAM) as waker:
            try:
                waker.sendto(b"", target)
            except OSError:
                pass
        thread.join(0.02)
    private.close()
    return not thread.is_alive()


# -- the predecessor's side ---------------------------------------------------------------
class Predecessor:
    """One hot restart attempt of the running daemon (its main thread, on SIGUSR2)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.timeout = float(daemon.config["hot_restart_timeout"])

    def run(self) -> bool:
        """True when the successor took over and this process should exit now."""
        daemon = self.daemon
        unsupported = sorted({listener.spec["protocol"] for listener in daemon.listeners}
                             - {"udp", "tcp"})
        if unsupported:  # their socket files are not handed over (yet): a restart would race
            return self._failed(None, "listeners of protocol " + ", ".join(unsupported)
                                + " cannot be handed over; stop and start instead")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {socket_key(listener.spec["protocol"], listener.spec["address"],
                          listener.spec["port"]): listener._sock.fileno()
               for listener in daemon.listeners}
        if daemon.workers is not None:  # every member of the receive workers' groups
            fds.update(daemon.workers.inherited_fds())
        env = {**os.environ, SOCKETS_ENV: orjson.dumps(fds).decode(),
               CHANNEL_ENV: str(theirs.fileno()), PREDECESSOR_ENV: str(os.getpid())}
        env.pop("WATCHDOG_PID", None)  # systemd's names this process; the successor pings too
        command = [sys.executable, *sys.orig_argv[1:]]
        try:
            child = subprocess.Popen(command, env=env, pass_fds=[theirs.fileno(), *fds.values()])
        except OSError as exc:
            theirs.close()
            ours.close()
            return self._failed(None, f"cannot start {command[0]}: {exc}")
        theirs.close()
        log.info("hot restart: started successor pid %d: %s", child.pid, " ".join(command))
        channel = Channel(ours)
        not_ready = self._await_ready(channel, child)
        if not_ready:
            ours.close()
            return self._failed(child, not_ready)
        self._hand_over(channel, child)
        return True

    def _await_ready(self, channel: Channel, child: subprocess.Popen[bytes]) -> str:
        """Empty when the successor said it reads; else why not."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            frame = channel.receive(min(deadline, time.monotonic() + 0.2))
            if frame is not None and frame[0] == READY:
                return ""
            code = child.poll()
            if code is not None:
                return f"the successor exited with status {code} before it was ready"
        return f"the successor was not ready within hot_restart_timeout ({self.timeout:g}s)"

    def _failed(self, child: subprocess.Popen[bytes] | None, why: str) -> bool:
        self.daemon.stats.incr("hot_restart.failed")
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.error("hot restart failed, still serving here: %s", why)
        return False

    def _collect_workers(self, table: Any, counts: dict[str, int]) -> tuple[Any, dict[str, int]]:
        """The receive workers stop (the successor's read the same sockets meanwhile, and
        what is buffered stays for them) and their intervals join the one handed over."""
        from pystatsd.workers.merge import TableMerge

        daemon = self.daemon
        assert daemon.workers is not None
        merge = TableMerge(daemon.manager)
        daemon.workers.collect(merge, final=True, drain=False)
        merge.add_table(table)
        merged = merge.table(daemon.manager, daemon.stats)
        for name, count in daemon.stats.take().items():
            counts[name] = counts.get(name, 0) + count
        return merged, counts

    def _hand_over(self, channel: Channel, child: subprocess.Popen[bytes]) -> None:
        daemon = self.daemon
        systemd.notify(f"MAINPID={child.pid}")
        daemon._stop_admin_interfaces()
        if daemon.admin is not None:
            daemon.admin.stop()
        forward = Forward(channel)
        with daemon.lock:
            assert daemon.pipeline is not None
            daemon.pipeline.publish_counts()
            table = daemon.manager.swap()
            counts = daemon.stats.take()
            daemon.pipeline = cast(Pipeline, forward)
        if daemon.workers is not None:
            table, counts = self._collect_workers(table, counts)
        state = export_state(daemon.manager, table, daemon._interval_started, counts)
        channel.send(STATE, state)
        for listener in daemon.listeners:
            if listener.spec["protocol"] == "udp":
                if not stop_shared_udp(cast("UdpListener", listener), self.timeout):
                    log.error("hot restart: a udp receive thread did not stop")
            else:
                listener.stop()
        channel.send(END)
        confirmed = channel.receive(time.monotonic() + self.timeout)
        if confirmed is None or confirmed[0] != ACK:
            log.critical("hot restart: the successor did not confirm the hand-over; the "
                         "interval in flight (%d series) may be lost", len(table))
        else:
            log.info("hot restart: handed over %d series and %d later payloads to pid %d",
                     len(table), forward.forwarded, child.pid)
        deadline = time.monotonic() + float(daemon.config["shutdown_timeout"])
        lost = {name: f.close(max(0.0, deadline - time.monotonic()))
                for name, f in daemon.forwarders.items()}
        if any(lost.values()):
            log.warning("hot restart: undelivered at exit: %s",
                        ", ".join(f"{name} {n}" for name, n in lost.items() if n))
        # The channel closes when this process exits: the successor's signal that the
        # forwarders above are closed and their files unlocked.
        self.channel_keepalive = channel


# -- the successor's side -----------------------------------------------------------------
class Successor:
    """This process, started by a predecessor's hot restart."""

    def __init__(self, channel: Channel, predecessor: int) -> None:
        self.channel = channel
        self.predecessor = predecessor

    @classmethod
    def from_environment(cls) -> Successor | None:
        fd = os.environ.pop(CHANNEL_ENV, None)
        pid = predecessor_pid()
        if fd is None or pid is None:
            return None
        return cls(Channel(socket.socket(fileno=int(fd))), pid)

    @staticmethod
    def starts_now(forwarder: Forwarder) -> bool:
        """Relay forwarders that own no files start at once, so relayed lines flow through
        the hand-over; the others (aggregate forwarders, and relays with a spool, which its
        flock makes exclusive) start once the predecessor has closed its own. A relay waiting
        to start buffers what it is given, up to its ``queue_size``."""
        return isinstance(forwarder, RelayForwarder) and not forwarder.needed_paths(
            forwarder.name, forwarder.config, forwarder.context) \
            and not forwarder.close_before_successor()  # a spool added at runtime

    def take_over(self, daemon: Daemon, timeout: float) -> None:
        """Tell the predecessor we read; merge its interval; ingest what it still received;
        return once it has exited (or the deadline passed)."""
        channel = self.channel
        channel.send(READY)
        deadline = time.monotonic() + timeout
        merged = False
        while True:
            frame = channel.receive(deadline)
            if frame is None:
                log.error("hot restart: the predecessor (pid %d) stopped before the end of "
                          "the hand-over%s", self.predecessor,
                          "" if merged else "; its interval in flight is lost")
                break
            kind, body = frame
            if kind == DATA:
                payload, options = pickle.loads(body)  # our predecessor's, as with S
                daemon._deliver(payload, *options)
            elif kind == STATE:
                state = pickle.loads(body)  # from our own predecessor, never client bytes
                with daemon.lock:
                    merge_state(daemon.manager, state)
                    for name, count in state["counts"].items():
                        daemon.stats.incr(name, count)
                daemon._interval_started = state["interval_started"]
                merged = True
            elif kind == END:
                channel.send(ACK)
                end = time.monotonic() + timeout + float(daemon.config["shutdown_timeout"])
                if channel.receive(end) is not None:
                    log.error("hot restart: unexpected frame after the end")
                break
        channel.sock.close()
        os.environ.pop(PREDECESSOR_ENV, None)
        log.info("hot restart: took over from pid %d", self.predecessor)

