"""The sockets metrics arrive on.

UDP runs a blocking receive loop in its own thread (asyncio's DatagramProtocol tops out far
below what one core can take: see DESIGN.md); where the native receive is built
(pystatsd/_receive.pyx), a drain thread without the GIL reads the socket into a ring and that
thread delivers from the ring, so a flush's ``fork()`` or its turns at the GIL never stop the
socket being drained (:data:`UDP_RECEIVE`). TCP, where throughput per connection is
lower and connections many, runs on an asyncio loop in one more thread. Both hand complete
payloads to a single ``deliver`` callable, which the daemon serializes with its ingest lock.

What a listener cannot take it counts, under ``listener.<protocol>.<address>_<port>.*``
(see :func:`metric_prefix`): datagrams the kernel dropped because the receive buffer was full
(``kernel_drops``), TCP connections refused at ``max_connections`` (``refused``), closed after
``idle_timeout_seconds`` (``idle_closed``), accepts paused because the process ran out of file
descriptors (``accept_paused``), and partial lines cut by a stop (``cut_lines``)."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pystatsd.graphite_ingest import GraphiteSource, graphite_source
from pystatsd.inherited_sockets import inherited_socket
from pystatsd.selfstats import SelfStats
from pystatsd.wire_formats import Framer, make_framer

log = logging.getLogger("pystatsd.listeners")



class Deliver(Protocol):
    """Where a listener hands each payload: the daemon's ingest, told the listener's
    ``format``, ``gauge_sign`` and, for graphite, what its datapoints mean (each listener binds
    its own with a partial, so the receive loops keep their one-argument call)."""

    def __call__(self, payload: bytes, fmt: str = "statsd", absolute_gauges: bool = False,
                 graphite: GraphiteSource | None = None) -> None: ...


class DeliverBatch(Protocol):
    """Where the native UDP receive hands a batch of a statsd listener's datagrams: as
    ``Deliver`` on each in order, calling ``failed(payload)`` inside the ``except`` for one
    that raised (the daemon's ``Pipeline.ingest_batch`` under one hold of the ingest lock)."""

    def __call__(self, payloads: list[bytes], failed: Callable[[bytes], object],
                 absolute_gauges: bool = False) -> None: ...

# Linux's SO_RCVBUFFORCE (not exported by the socket module): with CAP_NET_ADMIN it sets the
# receive buffer past net.core.rmem_max.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)

DROP_POLL_SECONDS = 1.0
"""How often each UDP listener reads its socket's drop count from /proc/net/udp."""
WARNING_INTERVAL = 60.0
"""Seconds between two warnings of one kind from one listener (the first is logged at once)."""
FD_HEADROOM = 64
"""File descriptors kept for everything but TCP clients (forwarder connections, spool and log
files, the admin socket) when the process limit forces lower connection caps."""
READ_BYTES = 65536
"""Bytes read from a TCP client at a time (asyncio reads 256 KiB: measurably slower to split)."""
ACCEPT_BATCH = 64
"""Connections accepted per wake-up of the TCP loop, so a flood cannot starve the clients."""
ACCEPT_RETRY_SECONDS = 1.0
"""How long accepting pauses when the process is out of file descriptors."""
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_TCP_INFO_BYTES_RECEIVED = struct.Struct("=Q")
_TCP_INFO_BYTES_RECEIVED_OFFSET = 128  # struct tcp_info.tcpi_bytes_received (Linux >= 4.1)
RING_BYTES = 4 << 20
"""Each UDP socket's native receive ring (prefaulted, so resident): what it absorbs while the
listener's thread cannot deliver, on top of the socket's buffer, e.g. ~87,000 one-line
datagrams of 40 bytes (0.9 s at 100k/s) or ~5,900 of 20 lines (700 bytes)."""

UDP_RECEIVE_ENV = "PYSTATSD_UDP_RECEIVE"
"""``python`` runs the pure-Python receive loop (the reference) where the native one is built;
``native`` refuses to start without it; unset or ``auto``: the native one if it imports."""


try:
    from pystatsd._receive import Ring as _RING_BUILT
    _NOT_BUILT = ""
except ImportError as _missing:  # not built (no Cython or compiler, not Linux): the Python loop
    _RING_BUILT, _NOT_BUILT = None, str(_missing)


def _select_udp_receive() -> tuple[Any, str]:
    """The native ring class (None for the Python loop), and a phrase saying which and why."""
    wanted = os.environ.get(UDP_RECEIVE_ENV, "auto").strip().lower() or "auto"
    if wanted == "python":
        return None, f"python ({UDP_RECEIVE_ENV}=python)"
    if wanted not in ("auto", "native"):
        raise RuntimeError(f"{UDP_RECEIVE_ENV}={wanted!r}: expected python, native or auto")
    if _RING_BUILT is None:
        if wanted == "native":
            raise RuntimeError(f"{UDP_RECEIVE_ENV}=native but the native receive does not "
                               f"import: {_NOT_BUILT}")
        return None, f"python (the native receive does not import: {_NOT_BUILT})"
    return _RING_BUILT, "native"


_RING, UDP_RECEIVE = _select_udp_receive()
"""Which UDP receive the listeners run: ``native`` or ``python (why)``."""


class ListenerError(OSError):
    """A listener cannot bind; the message names the address and the reason."""


def metric_prefix(protocol: str, host: str, port: int) -> str:
    """``listener.udp.127_0_0_1_5090``: the self-metric prefix of one listener. The address's
    dots and colons would split the name into levels or end it (':' is statsd syntax)."""
    flat = host.replace(".", "_").replace(":", "_")
    return f"listener.{protocol}.{flat}_{port}"


class _Throttle:
    """Say yes at most once per ``interval`` seconds; count the times it said no between."""

    def __init__(self, interval: float = WARNING_INTERVAL) -> None:
        self._interval = interval
        self._last: float | None = None
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self._interval:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def take_suppressed(self) -> str:
        """`` (N more since the last)``, or nothing, for the line being logged."""
        count, self.suppressed = self.suppressed, 0
        return f" ({count} more since the last)" if count else ""


def _bind(protocol: str, address: str, port: int, reuse_port: bool = False,
          member: int = 0) -> socket.socket:
    handed_over = inherited_socket(protocol, address, port, member)
    if handed_over is not None:  # a hot restart: the predecessor's bound socket
        return handed_over
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(address or None, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenerError(f"{protocol} {address}:{port}: cannot resolve: {exc}") from exc
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        if family == socket.AF_INET6:
            # "::" should take IPv4 clients too, whatever the system default says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"{protocol} {address}:{port}: cannot bind: {exc.strerror}") from exc
    return sock


def bind_group(spec: dict[str, Any], count: int) -> list[socket.socket]:
    """``count`` sockets bound to one UDP or TCP address with ``SO_REUSEPORT``, one per receive
    worker (pystatsd.workers): the kernel spreads datagrams and connections among them by a
    hash of the source address and port. The first fixes the port when the spec asks for 0;
    a hot restart's successor takes the predecessor's members (see ``inherited_socket``)."""
    protocol, address, port = spec["protocol"], spec["address"], spec["port"]
    group: list[socket.socket] = []
    try:
        for member in range(count):
            sock = _bind(protocol, address, port, reuse_port=True, member=member)
            if protocol == "tcp":  # listening at once: a worker restarting finds its backlog
                sock.listen(socket.SOMAXCONN)
            group.append(sock)
            port = port or sock.getsockname()[1]
    except Exception:
        for sock in group:
            sock.close()
        raise
    return group


class _Listener:
    """What every listener has: its spec, a bound socket, where payloads go, what it counts."""

    GAUGE_SIGN_DEFAULT = "delta"
    """``gauge_sign`` when the spec does not say (schema.yaml documents it per kind)."""

    def __init__(self, spec: dict[str, Any], deliver: Deliver, stats: SelfStats) -> None:
        self.spec = spec
        self._deliver: Callable[[bytes], None] = deliver
        if spec.get("gauge_sign", self.GAUGE_SIGN_DEFAULT) == "absolute":
            # A partial keeps the receive loops' one-argument call, and costs nothing on the
            # delta listeners.
            self._deliver = functools.partial(deliver, absolute_gauges=True)
        self._stats = stats
        self._sock = self._open_socket(spec)
        host, port = self._bound_address()
        self.address: tuple[str, int] = (host, port)
        """Where it is bound (the real port when the spec asked for 0); kept after a close."""
        self.prefix = metric_prefix(spec["protocol"], host, port)
        graphite = graphite_source(spec, self.prefix)
        if graphite is not None:  # what its datapoints mean, counted under its prefix
            self._deliver = functools.partial(self._deliver, graphite=graphite)
        self.bytes_received = 0
        """Payload bytes read since start (lyft statsrelay's bytes_recv_udp/tcp)."""
        self.last_alive = time.monotonic()
        """When the receive thread last answered :meth:`probe` (the watchdog's question)."""

    def _open_socket(self, spec: dict[str, Any]) -> socket.socket:
        """The bound socket (a Unix socket listener opens its own: pystatsd/uds_listeners.py)."""
        return _bind(spec["protocol"], spec["address"], spec["port"])

    def _bound_address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def label(self) -> str:
        """``udp 127.0.0.1:5090``, for log lines."""
        host, port = self.address
        return f"{self.spec['protocol']} {host}:{port}"

    def close_socket(self) -> None:
        self._sock.close()


class UdpListener(_Listener):
    """Receives datagrams on one socket in a dedicated thread.

    The receive blocks with no timeout: a timeout makes every receive a poll plus a recvfrom,
    measurably slower at 200k datagrams/s. To stop, the listener sends itself an empty
    datagram; it queues behind everything already received, so when it comes out every
    earlier datagram has been delivered.

    A second thread reads, once per :data:`DROP_POLL_SECONDS`, how many datagrams the kernel
    dropped on this socket because its receive buffer was full, so that loss is counted too."""

    def __init__(self, spec: dict[str, Any], deliver: Deliver, stats: SelfStats, *,
                 native: bool | None = None, deliver_batch: DeliverBatch | None = None) -> None:
        """``native``: whether to run the native receive (None: as :data:`UDP_RECEIVE` says;
        True where it is not built: the Python loop, as for ``auto``). ``deliver_batch``:
        what the native receive hands its batches to instead of ``deliver`` on each (a
        statsd listener's only; the Python loop always calls ``deliver``)."""
        super().__init__(spec, deliver, stats)
        self._deliver_batch: Callable[..., None] | None = None
        if deliver_batch is not None and spec.get("format", "statsd") == "statsd":
            self._deliver_batch = deliver_batch if spec.get(
                "gauge_sign", self.GAUGE_SIGN_DEFAULT) != "absolute" else functools.partial(
                    deliver_batch, absolute_gauges=True)
        if spec["receive_buffer_bytes"]:
            self._size_receive_buffer(spec["receive_buffer_bytes"])
        self._stopping = _StopFlag()
        self._ring: Any = None
        """The native receive's ring (pystatsd/_receive.pyx), or None: the Python loop."""
        ring_class = _RING if native is None else _RING_BUILT if native else None
        if ring_class is not None:
            try:
                self._ring = ring_class(self._sock.fileno(), spec["max_datagram_bytes"],
                                        RING_BYTES)
            except OSError as exc:
                log.warning("%s: the native receive cannot start (%s): receiving in Python",
                            self.label, exc)
            self._stopping.ring = self._ring
        self._ring_full_reported = 0
        self._thread = threading.Thread(target=self._run, name="udp-listener", daemon=True)
        self._drops = KernelDrops(self._sock)
        self._drops_reported = 0
        self._drop_warnings = _Throttle()
        self._watching = threading.Event()
        self._watcher = threading.Thread(target=self._watch_drops, name="udp-drops",
                                         daemon=True)

    def _size_receive_buffer(self, wanted: int) -> None:
        """Ask for ``wanted`` bytes of kernel buffer: it holds what arrives while a flush slows
        the receive thread. Without CAP_NET_ADMIN the kernel caps it at net.core.rmem_max,
        silently, so say so once."""
        sock = self._sock
        try:
            if _SO_RCVBUFFORCE is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, wanted)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux doubles it
        if granted < wanted:
            log.warning("udp %s:%d: receive buffer %d bytes of the %d asked (receive_buffer_bytes)"
                        "; raise net.core.rmem_max to absorb bursts during flushes",
                        *self.address, granted, wanted)

    @property
    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on this socket since it was opened, as last read."""
        return self._drops_reported

    @property
    def receive(self) -> str:
        """``native`` (the drain thread and its ring) or ``python``."""
        return "python" if self._ring is None else "native"

    def describe(self) -> dict[str, Any]:
        """This listener's state for ``--status``."""
        state = {"listener": self.label, "kernel_drops": self._drops_reported,
                 "receive_buffer_bytes": self._sock.getsockopt(socket.SOL_SOCKET,
                                                               socket.SO_RCVBUF) // 2
                 if self._sock.fileno() >= 0 else None, "receive": self.receive}
        if self._ring is not None:
            state["ring_bytes"] = self._ring.capacity
            state["ring_full"] = self._ring.ring_full
        return state

    def start(self) -> None:
        if self._ring is not None:  # the drain thread first: it reads from now on
            try:
                self._ring.start()
            except OSError as exc:
                log.warning("%s: the native receive cannot start (%s): receiving in Python",
                            self.label, exc)
                self._ring = self._stopping.ring = None
        self._thread.start()
        if self._drops.available:
            self._watcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving; whatever the kernel still buffers is read and delivered first, and
        the drop count is read a last time, so the final flush has it."""
        self._stopping.set()
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout)
            if self._thread.is_alive():  # the wake-up datagram was lost: end the receive
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # ENOTCONN (a UDP socket has no peer): shut down all the same
                    pass
                self._thread.join(timeout)
        self._watching.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout)
        self.report_kernel_drops()
        self._sock.close()

    def _watch_drops(self) -> None:
        while not self._watching.wait(DROP_POLL_SECONDS):
            self.report_kernel_drops()

    def report_kernel_drops(self) -> None:
        """Count the drops since the last report under ``<prefix>.kernel_drops`` and warn
        (rate-limited) with what to raise; and the times the native ring was full
        (``<prefix>.ring_full``: the socket buffer took what came meanwhile)."""
        if self._ring is not None:
            full = self._ring.ring_full
            if full > self._ring_full_reported:
                self._stats.incr(self.prefix + ".ring_full", full - self._ring_full_reported)
                self._ring_full_reported = full
        total = self._drops.read()
        if total is None or total <= self._drops_reported:
            return
        new, self._drops_reported = total - self._drops_reported, total
        self._stats.incr(self.prefix + ".kernel_drops", new)
        if self._drop_warnings.ready():
            granted = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            log.warning("%s: the kernel dropped %d datagrams (%d since start%s): the receive "
                        "buffer (%d bytes) was full; raise receive_buffer_bytes, and "
                        "net.core.rmem_max (now %s) if the kernel grants less than asked",
                        self.label, new, total, self._drop_warnings.take_suppressed(), granted,
                        _read_sysctl("net/core/rmem_max"))

    def probe(self) -> None:
        """Ask the receive thread for a sign of life: an empty datagram, queued behind what
        the socket holds, which the loop answers by setting ``last_alive``."""
        self._wake()

    def _wake(self) -> None:
        host, port = self.address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        try:  # from the socket itself: needs no descriptor, which may have run out
            self._sock.sendto(b"", (host, port))
        except OSError as exc:
            log.warning("cannot wake the udp listener on %s:%d: %s", host, port, exc)

    def _run(self) -> None:
        if self._ring is not None:
            self._run_native(self._ring)
        else:
            self._run_python()

    def _run_native(self, ring: Any) -> None:
        """Deliver what the drain thread puts in the ring, until it ends: at the empty
        datagram that stops it, after what the socket held then (as :meth:`_run_python`)."""
        deliver, failed, batch = self._deliver, self._ingest_failed, self._deliver_batch
        while True:
            delivered, probes, errors, ended = ring.deliver(deliver, failed, batch)
            self.bytes_received += delivered
            if probes:  # the watchdog's probe came through the ring: neither thread is wedged
                self.last_alive = time.monotonic()
            for error in errors:
                self._stats.incr("listener.udp.errors")
                log.error("udp receive failed: %s", os.strerror(error))
            if ended:
                break
        ring.join()

    def _ingest_failed(self, payload: bytes) -> None:
        """Called inside the ``except`` of a delivery that raised."""
        self._stats.incr("listener.udp.ingest_errors")
        log.exception("ingest failed for a %d-byte datagram", len(payload))

    def _run_python(self) -> None:
        recv, size, deliver = self._sock.recv, self.spec["max_datagram_bytes"], self._deliver
        while True:
            try:
                payload = recv(size)
            except OSError as exc:
                if self._stopping.is_set():
                    return
                self._stats.incr("listener.udp.errors")
                log.error("udp receive failed: %s", exc)
                continue
            if payload:
                self.bytes_received += len(payload)
                try:  # inline, not _deliver_one: this loop is the hot path
                    deliver(payload)
                except Exception:
                    self._stats.incr("listener.udp.ingest_errors")
                    log.exception("ingest failed for a %d-byte datagram", len(payload))
            elif self._stopping.is_set():
                break  # our own wake-up: everything received before the stop is delivered
            else:  # the watchdog's probe came through the queue: this thread is not wedged
                self.last_alive = time.monotonic()
        # What arrived between the stop and the wake-up is delivered too.
        self._sock.setblocking(False)
        while True:
            try:
                payload = recv(size)
            except OSError:
                return
            if payload:
                self.bytes_received += len(payload)
                self._deliver_one(payload)

    def _deliver_one(self, payload: bytes) -> None:
        try:
            self._deliver(payload)
        except Exception:  # whatever a payload does, the listener must keep receiving
            self._ingest_failed(payload)


class _StopFlag(threading.Event):
    """A UDP listener's stop: set, it also tells the native drain thread (which reads it
    without the GIL) that the next empty datagram is the wake-up that ends it. Whoever stops
    the listener sets it, the listener itself or a hot restart (pystatsd.hot_restart)."""

    ring: Any = None

    def set(self) -> None:
        if self.ring is not None:
            self.ring.request_stop()
        super().set()


class KernelDrops:
    """The ``drops`` column of /proc/net/udp (or udp6) for one socket, found by its inode: the
    datagrams the kernel discarded for that socket, mostly because its buffer was full."""

    def __init__(self, sock: socket.socket) -> None:
        self._inode = str(os.fstat(sock.fileno()).st_ino).encode()
        name = "udp6" if sock.family == socket.AF_INET6 else "udp"
        self._table = f"/proc/self/net/{name}"
        self.available = self.read() is not None

    def read(self) -> int | None:
        """The count now, or None where the table is absent (not Linux) or lacks the socket."""
        try:
            with open(self._table, "rb") as table:
                next(table, None)  # the header
                for row in table:
                    fields = row.split()
                    if len(fields) > 12 and fields[9] == self._inode:
                        return int(fields[12])
        except (OSError, ValueError):
            return None
        return None


def _read_sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name}") as value:
            return value.read().strip()
    except OSError:
        return "unknown"


class TcpListener(_Listener):
    """Newline-delimited metrics over TCP, on an asyncio loop in its own thread.

    At most ``max_connections`` clients at once (one more is accepted and closed at once, and
    counted); a client silent for ``idle_timeout_seconds`` is closed. When the process runs
    out of file descriptors, accepting pauses for :data:`ACCEPT_RETRY_SECONDS`; that is counted
    and logged once a minute. (The accept loop is our own: asyncio's, at EMFILE, calls its
    exception handler once per backlog slot per attempt, which was the traceback storm.)"""

    def __init__(self, spec: dict[str, Any], deliver: Deliver, stats: SelfStats,
                 max_connections: int | None = None) -> None:
        super().__init__(spec, deliver, stats)
        self.max_connections = max_connections or spec["max_connections"]
        self._idle_timeout = float(spec["idle_timeout_seconds"])
        self._loop = asyncio.new_event_loop()
        self._connections: set[_Connection] = set()
        self._accepting = False
        self._refusals = _Throttle()
        self._out_of_fds = _Throttle()
        self._out_of_fds_at: float | None = None
        self._out_of_fds_ceiling = 0
        self._idle_closes = _Throttle()
        self._accept_errors = _Throttle()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-listener",
                                        daemon=True)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def describe(self) -> dict[str, Any]:
        """This listener's state for ``--status``."""
        return {"listener": self.label, "open_connections": len(self._connections),
                "max_connections": self.max_connections,
                "idle_timeout_seconds": self._idle_timeout,
                "accepting": self._accepting and self._out_of_fds_at is None}

    def start(self) -> None:
        self._sock.listen(socket.SOMAXCONN)
        self._sock.setblocking(False)
        self._thread.start()
        self._loop.call_soon_threadsafe(self._begin)

    def probe(self) -> None:
        """Ask the event loop for a sign of life: it sets ``last_alive`` when it gets to it."""
        try:
            self._loop.call_soon_threadsafe(self._answer_probe)
        except RuntimeError:  # the loop is closed: stopping, and no longer watched
            pass

    def _answer_probe(self) -> None:
        self.last_alive = time.monotonic()

    def _begin(self) -> None:
        self._accepting = True
        self._loop.add_reader(self._sock.fileno(), self._accept)
        if self._idle_timeout:
            self._loop.call_later(self._sweep_period(), self._close_idle)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._pause_accepting(exc)
                else:
                    self._stats.incr(self.prefix + ".accept_errors")
                    if self._accept_errors.ready():
                        log.error("%s: accept failed: %s%s", self.label, exc,
                                  self._accept_errors.take_suppressed())
                return
            if not self._admit():
                conn.close()  # at once: the descriptor is free again for the rest
                continue
            self._attach(conn)

    def _attach(self, conn: socket.socket) -> None:
        """Give an accepted socket its transport and protocol."""
        conn.setblocking(False)
        connection = _Connection(self)
        self._connections.add(connection)

        def attached(done: asyncio.Task[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                self._connections.discard(connection)
                conn.close()

        task = self._loop.create_task(
            self._loop.connect_accepted_socket(lambda: connection, conn))
        task.add_done_callback(attached)

    def _admit(self) -> bool:
        """Whether a new connection may stay: fewer than ``max_connections`` are open, and
        the process has not just run out of descriptors."""
        if len(self._connections) < min(self.max_connections, self._fd_ceiling()):
            self._stats.incr("listener.tcp.connections")
            return True
        self._stats.incr(self.prefix + ".refused")
        if self._refusals.ready():
            why = ("the most max_connections allows" if self._out_of_fds_at is None
                   else "no more while the process is short of file descriptors")
            log.warning("%s: refused a connection: %d open, %s%s", self.label,
                        len(self._connections), why, self._refusals.take_suppressed())
        return False

    def _pause_accepting(self, exc: OSError) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume_accepting)
        self._stats.incr(self.prefix + ".accept_paused")
        self._out_of_fds_at = time.monotonic()
        self._out_of_fds_ceiling = max(0, len(self._connections) - 2)
        if self._out_of_fds.ready():
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error("%s: cannot accept: %s (%d client connections open, the process may "
                      "open %d files): accepting paused; raise LimitNOFILE/ulimit -n or lower "
                      "max_connections%s", self.label, exc.strerror, len(self._connections),
                      soft, self._out_of_fds.take_suppressed())

    def _resume_accepting(self) -> None:
        if self._accepting:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _fd_ceiling(self) -> int:
        """Connections allowed since the process last ran out of descriptors: fewer than were
        open then, for a minute, so a descriptor freed for someone else (the admin socket, a
        forwarder) is not taken by one more client."""
        if self._out_of_fds_at is None:
            return sys.maxsize
        if time.monotonic() - self._out_of_fds_at > WARNING_INTERVAL:
            self._out_of_fds_at = None
            return sys.maxsize
        return self._out_of_fds_ceiling

    def _sweep_period(self) -> float:
        return min(1.0, self._idle_timeout / 4)

    def _close_idle(self) -> None:
        if not self._accepting:
            return
        now = self._loop.time()
        closed = cut = 0
        for connection in list(self._connections):
            if now - connection.last_active >= self._idle_timeout:
                self._connections.discard(connection)
                cut += connection.close_idle()
                closed += 1
        if cut:
            self._stats.incr(self.prefix + ".cut_lines", cut)
        if closed:
            self._stats.incr(self.prefix + ".idle_closed", closed)
            if self._idle_closes.ready():
                log.info("%s: closed %d connections idle for %gs (idle_timeout_seconds)%s",
                         self.label, closed, self._idle_timeout,
                         self._idle_closes.take_suppressed())
        self._loop.call_later(self._sweep_period(), self._close_idle)

    def deliver_lines(self, complete: bytes) -> None:
        """Hand complete lines (joined by newlines, none over the limit) to ingest."""
        try:
            self._deliver(complete)
        except Exception:
            self._stats.incr("listener.tcp.ingest_errors")
            log.exception("ingest failed for %d bytes of tcp lines", len(complete))

    def reject_too_long(self, line: bytes) -> None:
        limit = self.spec["max_datagram_bytes"]
        self._stats.reject("too_long", f"tcp line over {limit} bytes", line)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting; read what every connection already delivered to the kernel, without
        waiting for the client; close; count and log what was cut."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout + 30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()
        self._sock.close()

    async def _shutdown(self) -> None:
        if self._accepting:
            self._accepting = False
            self._loop.remove_reader(self._sock.fileno())
        drained = [connection.drain_and_close() for connection in list(self._connections)]
        self._connections.clear()
        # Clients whose connection the kernel completed but we had not accepted yet may have
        # sent already: their data was acknowledged too.
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                break
            with conn:
                drained.append(_Connection(self).drain_socket(conn))
        self._sock.close()
        self._report_stop(drained)

    def _report_stop(self, drained: list[_Drained]) -> None:
        if not drained:
            return
        read = sum(d.read for d in drained)
        unread = sum(d.unread for d in drained)
        cut = sum(1 for d in drained if d.cut_bytes)
        cut_bytes = sum(d.cut_bytes for d in drained)
        if cut:
            self._stats.incr(self.prefix + ".cut_lines", cut)
        if cut or unread:
            log.warning("%s: stopped %d connections; read %d bytes, lost %d bytes: %d partial "
                        "lines (%d bytes) cut mid-line, %d bytes the kernel held unread",
                        self.label, len(drained), read, cut_bytes + unread, cut, cut_bytes,
                        unread)
        else:
            log.info("%s: stopped %d connections; read all %d bytes they delivered, lost "
                     "nothing", self.label, len(drained), read)


class _Drained:
    """What stopping one connection found: bytes read in all, bytes the kernel had received
    but the listener never read (0 unless something failed), bytes of a cut last line."""

    def __init__(self, read: int, unread: int, cut_bytes: int) -> None:
        self.read = read
        self.unread = unread
        self.cut_bytes = cut_bytes


class _Connection(asyncio.Protocol):
    """One TCP client: splits its stream into lines and hands complete ones on."""

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._limit = listener.spec["max_datagram_bytes"]
        self._transport: asyncio.Transport | None = None
        self._pending = b""
        self._skipping = False  # inside a line that already exceeded the limit
        self._read = 0
        self.last_active = time.monotonic()
        fmt = listener.spec.get("format", "statsd")
        self._framer: Framer | None = (None if fmt == "statsd" else
                                       make_framer(fmt, self._limit, listener._stats))
        """Another format's cutter (pystatsd.wire_formats); None: newline-delimited statsd."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.max_size = READ_BYTES  # type: ignore[attr-defined]
        self.last_active = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = asyncio.get_running_loop().time()
        self._feed(data)

    def eof_received(self) -> bool:
        if self._framer is not None:
            for payload in self._framer.finish():
                self._listener.deliver_lines(payload)
            return False
        # The client closed its side: a last line without a newline is complete.
        if self._pending and not self._skipping:
            self._deliver(self._pending)
        self._pending = b""
        return False

    def close_idle(self) -> bool:
        """Close a silent connection; True when that cut a line it had begun."""
        if self._transport is not None:
            self._transport.close()
        cut = bool(self._pending) and not self._skipping
        self._pending = b""
        return cut

    def _feed(self, chunk: bytes) -> None:
        self._read += len(chunk)
        self._listener.bytes_received += len(chunk)
        if self._framer is not None:
            self._feed_framed(chunk)
            return
        limit = self._limit
        data = self._pending + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending = data
        else:
            complete, self._pending = data[:cut], data[cut + 1:]
            if self._skipping:
                # The rest of an over-long line ends at the first newline.
                complete = complete.partition(b"\n")[2]
                self._skipping = False
            self._deliver(complete)
        if len(self._pending) > limit:
            if not self._skipping:
                self._listener.reject_too_long(self._pending)
            self._skipping, self._pending = True, b""

    def _feed_framed(self, chunk: bytes) -> None:
        framer = self._framer
        assert framer is not None
        if framer.closed:
            return
        for payload in framer.feed(chunk):
            self._listener.deliver_lines(payload)
        if framer.closed and self._transport is not None:
            self._transport.close()  # the stream cannot be trusted past what it refused

    def _deliver(self, complete: bytes) -> None:
        if not complete:
            return
        if len(complete) > self._limit:
            kept = []
            for line in complete.split(b"\n"):
                if len(line) > self._limit:
                    self._listener.reject_too_long(line)
                else:
                    kept.append(line)
            complete = b"\n".join(kept)
        self._listener.deliver_lines(complete)

    def drain_and_close(self) -> _Drained:
        """Stop reading through the transport, drain its socket (see :meth:`drain_socket`),
        then drop the transport without waiting for anything."""
        transport = self._transport
        if transport is None:  # accepted, not attached yet: nothing read so far
            return _Drained(0, 0, 0)
        transport.pause_reading()
        fd = transport.get_extra_info("socket").fileno()
        raw = socket.socket(fileno=fd)  # the transport's descriptor: needs no new one
        try:
            drained = self.drain_socket(raw)
        finally:
            raw.detach()
        transport.abort()
        return drained

    def drain_socket(self, raw: socket.socket) -> _Drained:
        """Shut the connection in both directions, then read everything the kernel holds.

        After the shutdown the kernel answers any further data with a reset instead of
        acknowledging it, so what is read here is exactly what the client's kernel was told
        had arrived. A last line without its newline is cut: it is counted, not guessed at."""
        raw.setblocking(False)
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the client: the queue may still hold data
        while True:
            try:
                chunk = raw.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            self._feed(chunk)
        received = _bytes_received(raw)
        cut_bytes = 0 if self._skipping else len(self._pending)
        self._pending = b""
        unread = max(0, received - self._read) if received is not None else 0
        return _Drained(self._read, unread, cut_bytes)


def _bytes_received(sock: socket.socket) -> int | None:
    """The kernel's count of bytes it received (and acknowledged) on a TCP socket."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    end = _TCP_INFO_BYTES_RECEIVED_OFFSET + _TCP_INFO_BYTES_RECEIVED.size
    if len(info) < end:
        return None
    received: int = _TCP_INFO_BYTES_RECEIVED.unpack_from(info, _TCP_INFO_BYTES_RECEIVED_OFFSET)[0]
    return received


def connection_caps(specs: list[dict[str, Any]]) -> list[int]:
    """Each TCP listener's connection cap, in the order of its spec among TCP specs.

    The caps plus :data:`FD_HEADROOM` must fit under the process's file limit, or a flood of
    clients would leave no descriptor for the forwarders, spool, logs and admin socket. The
    soft limit is raised toward the hard one if that is enough; if not, the caps are lowered
    in proportion, with one warning each naming the key."""
    tcp = [spec for spec in specs if spec["protocol"] == "tcp"]
    wanted = [int(spec["max_connections"]) for spec in tcp]
    if not tcp:
        return []
    needed = sum(wanted) + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                log.info("raised the open-file limit from %d to %d for max_connections",
                         soft, target)
                soft = target
            except (ValueError, OSError) as exc:
                log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    spare = max(len(tcp), soft - min(FD_HEADROOM, soft // 2))
    caps = []
    for index, (spec, cap) in enumerate(zip(tcp, wanted, strict=True)):
        lowered = max(1, cap * spare // sum(wanted))
        if lowered < cap:
            log.warning("tcp %s:%s: max_connections %d lowered to %d: the process may open "
                        "only %d files (ulimit -n, LimitNOFILE=) and keeps the rest for "
                        "forwarders, logs and the admin socket (tcp listener %d)",
                        spec["address"], spec["port"], cap, lowered, soft, index)
        caps.append(min(cap, lowered))
    return caps


def open_listeners(specs: list[dict[str, Any]], deliver: Deliver, stats: SelfStats,
                   deliver_batch: DeliverBatch | None = None) -> list[Any]:
    """Bind every listener (raising :class:`ListenerError` and closing the rest on failure);
    none receives until ``start``. ``deliver_batch``: the UDP statsd listeners' batch entry
    (:class:`DeliverBatch`), if the caller has one."""
    from pystatsd.uds_listeners import UNIX_LISTENERS  # it builds on this module's classes

    opened: list[Any] = []
    caps = iter(connection_caps(specs))
    try:
        for spec in specs:
            fmt = spec.get("format", "statsd")
            if fmt == "graphite_pickle" and spec["protocol"] == "udp":
                raise ListenerError(f"udp {spec['address']}:{spec['port']}: format "
                                    "graphite_pickle is tcp only")
            # a non-statsd listener tells the daemon its format (pystatsd.wire_formats)
            spec_deliver = deliver if fmt == "statsd" else functools.partial(deliver, fmt=fmt)
            if spec["protocol"] in UNIX_LISTENERS:
                opened.append(UNIX_LISTENERS[spec["protocol"]](spec, spec_deliver, stats))
            elif spec["protocol"] == "udp":
                opened.append(UdpListener(spec, spec_deliver, stats,
                                          deliver_batch=deliver_batch))
            else:
                opened.append(TcpListener(spec, spec_deliver, stats, next(caps)))
    except Exception:
        for listener in opened:
            listener.close_socket()
        raise
    return opened
