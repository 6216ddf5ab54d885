"""The sockets metrics arrive on.

UDP runs a plain blocking receive loop in its own thread (asyncio's DatagramProtocol tops out
far below what one core can take: see DESIGN.md). TCP, where throughput per connection is
lower and connections many, runs on an asyncio loop in one more thread. Both hand complete
payloads to a single ``deliver`` callable, which the daemon serializes with its ingest lock."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from pystatsd.selfstats import SelfStats
from pystatsd.wire_formats import make_framer

log = logging.getLogger("pystatsd.listeners")

Deliver = Callable[[bytes], None]


class FormatDeliver(Protocol):
    """``deliver`` as the daemon gives it: a payload, and its listener's format."""

    def __call__(self, payload: bytes, fmt: str = "statsd") -> None: ...

# Linux's SO_RCVBUFFORCE (not exported by the socket module): with CAP_NET_ADMIN it sets the
# receive buffer past net.core.rmem_max.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)


class ListenerError(OSError):
    """A listener cannot bind; the message names the address and the reason."""


def _bind(protocol: str, address: str, port: int) -> socket.socket:
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
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"{protocol} {address}:{port}: cannot bind: {exc.strerror}") from exc
    return sock


class _Listener:
    """What every listener has: its spec, a bound socket, where payloads go, what it counts."""

    def __init__(self, spec: dict[str, Any], deliver: Deliver, stats: SelfStats) -> None:
        self.spec = spec
        self._deliver = deliver
        self._stats = stats
        self._sock = _bind(spec["protocol"], spec["address"], spec["port"])

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def close_socket(self) -> None:
        self._sock.close()


class UdpListener(_Listener):
    """Receives datagrams on one socket in a dedicated thread.

    The receive blocks with no timeout: a timeout makes every receive a poll plus a recvfrom,
    measurably slower at 200k datagrams/s. To stop, the listener sends itself an empty
    datagram; it queues behind everything already received, so when it comes out every
    earlier datagram has been delivered."""

    def __init__(self, spec: dict[str, Any], deliver: Deliver, stats: SelfStats) -> None:
        super().__init__(spec, deliver, stats)
        if spec["receive_buffer_bytes"]:
            self._size_receive_buffer(spec["receive_buffer_bytes"])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-listener", daemon=True)

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

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving; whatever the kernel still buffers is read and delivered first."""
        self._stopping.set()
        if self._thread.is_alive():
            self._wake()
            self._thread.join(timeout)
            if self._thread.is_alive():  # the wake-up datagram was lost: end the receive
                self._sock.shutdown(socket.SHUT_RDWR)
                self._thread.join(timeout)
        self._sock.close()

    def _wake(self) -> None:
        host, port = self.address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        try:
            with socket.socket(self._sock.family, socket.SOCK_DGRAM) as waker:
                waker.sendto(b"", (host, port))
        except OSError as exc:
            log.warning("cannot wake the udp listener on %s:%d: %s", host, port, exc)

    def _run(self) -> None:
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
                try:  # inline, not _deliver_one: this loop is the hot path
                    deliver(payload)
                except Exception:
                    self._stats.incr("listener.udp.ingest_errors")
                    log.exception("ingest failed for a %d-byte datagram", len(payload))
            elif self._stopping.is_set():
                break  # our own wake-up: everything received before the stop is delivered
        # What arrived between the stop and the wake-up is delivered too.
        self._sock.setblocking(False)
        while True:
            try:
                payload = recv(size)
            except OSError:
                return
            if payload:
                self._deliver_one(payload)

    def _deliver_one(self, payload: bytes) -> None:
        try:
            self._deliver(payload)
        except Exception:  # whatever a payload does, the listener must keep receiving
            self._stats.incr("listener.udp.ingest_errors")
            log.exception("ingest failed for a %d-byte datagram", len(payload))


class TcpListener(_Listener):
    """Newline-delimited metrics over TCP, on an asyncio loop in its own thread."""

    def __init__(self, spec: dict[str, Any], deliver: Deliver, stats: SelfStats) -> None:
        super().__init__(spec, deliver, stats)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-listener",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock,
                                                  limit=self.spec["max_datagram_bytes"])

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, let open connections deliver what they already sent, then close."""
        asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _shutdown(self, timeout: float) -> None:
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._stats.incr("listener.tcp.connections")
        try:
            await self._read_lines(reader)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read_lines(self, reader: asyncio.StreamReader) -> None:
        if self.spec.get("format", "statsd") != "statsd":
            await self._read_framed(reader)
            return
        limit = self.spec["max_datagram_bytes"]
        pending = b""
        skipping = False  # inside a line that already exceeded the limit
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data = pending + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                pending = data
            else:
                complete, pending = data[:cut], data[cut + 1:]
                if skipping:
                    # The rest of an over-long line ends at the first newline.
                    complete = complete.partition(b"\n")[2]
                    skipping = False
                self._deliver_lines(complete, limit)
            if len(pending) > limit:
                if not skipping:
                    self._stats.reject("too_long", f"tcp line over {limit} bytes", pending)
                skipping, pending = True, b""
        if pending and not skipping:
            self._deliver_lines(pending, limit)

    async def _read_framed(self, reader: asyncio.StreamReader) -> None:
        """A connection of another format: its framer (pystatsd.wire_formats) cuts the units."""
        framer = make_framer(self.spec["format"], self.spec["max_datagram_bytes"], self._stats)
        while not framer.closed:
            chunk = await reader.read(65536)
            for payload in framer.feed(chunk) if chunk else framer.finish():
                try:
                    self._deliver(payload)
                except Exception:
                    self._stats.incr("listener.tcp.ingest_errors")
                    log.exception("ingest failed for %d bytes of %s", len(payload),
                                  self.spec["format"])
            if not chunk:
                break

    def _deliver_lines(self, complete: bytes, limit: int) -> None:
        if not complete:
            return
        if len(complete) > limit:
            kept = []
            for line in complete.split(b"\n"):
                if len(line) > limit:
                    self._stats.reject("too_long", f"tcp line over {limit} bytes", line)
                else:
                    kept.append(line)
            complete = b"\n".join(kept)
        try:
            self._deliver(complete)
        except Exception:
            self._stats.incr("listener.tcp.ingest_errors")
            log.exception("ingest failed for %d bytes of tcp lines", len(complete))


def open_listeners(specs: list[dict[str, Any]], deliver: FormatDeliver,
                   stats: SelfStats) -> list[UdpListener | TcpListener]:
    """Bind every listener (raising :class:`ListenerError` and closing the rest on failure);
    none receives until ``start``."""
    opened: list[UdpListener | TcpListener] = []
    try:
        for spec in specs:
            cls = UdpListener if spec["protocol"] == "udp" else TcpListener
            fmt = spec.get("format", "statsd")
            if fmt == "graphite_pickle" and spec["protocol"] == "udp":
                raise ListenerError(f"udp {spec['address']}:{spec['port']}: format "
                                    "graphite_pickle is tcp only")
            opened.append(cls(spec, deliver if fmt == "statsd"
                              else functools.partial(deliver, fmt=fmt), stats))
    except Exception:
        for listener in opened:
            listener.close_socket()
        raise
    return opened
