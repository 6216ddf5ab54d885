"""One relay destination: a bounded byte queue of whole lines and the socket that drains it.

Only the relay's sender thread touches a backend (the receive thread hands it lines through the
forwarder's pending lists), so nothing here takes a lock. Sockets are non-blocking: a slow or
dead backend only keeps its own queue growing, up to ``queue_bytes``; past that its new lines
are dropped and counted.

The queue holds ``\\n``-terminated lines, so every cut is taken at a line boundary:

* UDP packs as many whole lines as fit in ``max_datagram_bytes`` into one datagram. A line
  longer than that goes alone when it fits the largest UDP payload (65507 bytes), else it is
  dropped and counted. A datagram the kernel refuses for its size is dropped and counted too,
  never truncated.
* TCP writes the queue as a stream. When a connection dies part-way through a line, the rest of
  that line is discarded, so the next connection starts on a line boundary. The queue survives
  the reconnect (with exponential backoff).
"""

from __future__ import annotations

import errno
import re
import select
import socket
import time
from dataclasses import dataclass

from forwarders.backoff import Backoff

__all__ = ["MAX_UDP_PAYLOAD", "Backend", "BackendAddress"]

MAX_UDP_PAYLOAD = 65507
TCP_WRITE_CHUNK = 256 * 1024
MAX_DATAGRAMS_PER_PUMP = 4096
_REFUSED = (ConnectionRefusedError, ConnectionResetError)


@dataclass(frozen=True)
class BackendAddress:
    host: str
    port: int
    protocol: str  # "udp" or "tcp"

    @property
    def key(self) -> str:
        """``host:port:proto``, the name used in stats and logs (lyft's backend key)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}:{self.protocol}"

    @property
    def stat_key(self) -> str:
        """``host_port_proto`` with dots and colons made ``_``: safe inside a metric name."""
        return re.sub(r"[.:\[\]]", "_", f"{self.host}_{self.port}_{self.protocol}")


class Backend:
    """A destination with its queue, socket, reconnect state and counters."""

    def __init__(self, address: BackendAddress, *, queue_bytes: int, max_datagram_bytes: int,
                 connect_timeout: float, backoff_min: float, backoff_max: float,
                 dead_after: float, health_port: int | None = None) -> None:
        self.address = address
        self.queue_bytes = queue_bytes
        self.max_datagram_bytes = max_datagram_bytes
        self.connect_timeout = connect_timeout
        self.backoff = Backoff(backoff_min, backoff_max)
        self.dead_after = dead_after
        self.health_port = health_port
        self.buffer = bytearray()
        self.sock: socket.socket | None = None
        self.connected = False
        self._connect_deadline = 0.0
        self._failing_since: float | None = None
        self._cut_mid_line = False  # the last TCP write ended inside a line
        self._udp_trial = False  # a UDP send went through after failures; confirm on the next
        self.probe_ok: bool | None = None  # last health check, None when not checked
        self.counters: dict[str, int] = {
            "enqueued_lines": 0,
            "relayed_lines": 0,
            "bytes_sent": 0,
            "datagrams_sent": 0,
            "dropped_queue_full": 0,
            "dropped_too_long": 0,
            "dropped_partial": 0,
            "send_errors": 0,
            "connects": 0,
            "connect_failures": 0,
        }

    # -- queue ----------------------------------------------------------------------------
    def enqueue(self, lines: list[bytes]) -> None:
        """Append whole lines; what does not fit under ``queue_bytes`` is dropped and counted."""
        data = b"\n".join(lines) + b"\n"
        room = self.queue_bytes - len(self.buffer)
        kept = len(lines)
        if len(data) > room:
            keep = data.rfind(b"\n", 0, max(room, 0)) + 1 if room > 0 else 0
            dropped = data.count(b"\n", keep)
            self.counters["dropped_queue_full"] += dropped
            kept -= dropped
            data = data[:keep]
            if not data:
                return
        self.counters["enqueued_lines"] += kept
        self.buffer += data

    def queued_lines(self) -> int:
        return self.buffer.count(b"\n")

    def discard_queue(self) -> int:
        """Empty the queue; return how many lines it held."""
        left = self.queued_lines()
        self.buffer.clear()
        return left

    # -- health ---------------------------------------------------------------------------
    def alive(self, now: float) -> bool:
        """False once sending has failed for ``dead_after`` seconds or the last health check
        failed; True again as soon as a connect, a send or a check succeeds."""
        if self.probe_ok is False:
            return False
        return self._failing_since is None or now - self._failing_since < self.dead_after

    def failing(self) -> bool:
        return self._failing_since is not None or self.probe_ok is False

    def _failed(self, now: float) -> None:
        if self._failing_since is None:
            self._failing_since = now
        self.backoff.failed(now)

    def _succeeded(self) -> None:
        self._failing_since = None
        self.backoff.succeeded()

    # -- sending --------------------------------------------------------------------------
    def open(self) -> None:
        """Create the socket; UDP connects at once, TCP on the first pump."""
        if self.address.protocol == "udp":
            self._open_udp()

    def pump(self, now: float) -> None:
        """Send what the socket takes without blocking."""
        if not self.buffer:
            if self.address.protocol == "tcp" and self.connected:
                self._notice_remote_close(now)
            elif self._failing_since is not None and not self.backoff.waiting(now):
                self._probe(now)  # nothing to send (its keys may be rerouted): is it back?
            return
        if self.backoff.waiting(now):
            return
        if self.address.protocol == "udp":
            self._pump_udp(now)
        else:
            self._pump_tcp(now)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.connected = False

    def _family_address(self) -> tuple[int, tuple[str, int]]:
        kind = socket.SOCK_DGRAM if self.address.protocol == "udp" else socket.SOCK_STREAM
        family, _, _, _, sockaddr = socket.getaddrinfo(
            self.address.host, self.address.port, 0, kind)[0]
        return family, (str(sockaddr[0]), int(sockaddr[1]))

    def _open_udp(self) -> None:
        family, sockaddr = self._family_address()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(sockaddr)  # connected: the kernel reports ICMP "port unreachable" to us
        self.sock = sock
        self.connected = True

    def _probe(self, now: float) -> None:
        """TCP: connect. UDP: an empty datagram (statsd servers skip empty lines), whose
        "port unreachable" shows up on the next probe or send."""
        if self.address.protocol == "tcp":
            self._connect(now)
            return
        if self.sock is None:
            try:
                self._open_udp()
            except OSError:
                self._failed(now)
                return
        assert self.sock is not None
        try:
            self.sock.send(b"")
        except BlockingIOError:
            return
        except OSError:
            self._udp_trial = False
            self._failed(now)
            return
        if self._udp_trial:
            self._udp_trial = False
            self._succeeded()
        else:
            self._udp_trial = True
            self.backoff.next_attempt = now + self.backoff.minimum

    def _pump_udp(self, now: float) -> None:
        if self.sock is None:
            try:
                self._open_udp()
            except OSError:
                self.counters["send_errors"] += 1
                self._failed(now)
                return
        sock = self.sock
        assert sock is not None
        buffer = self.buffer
        limit = self.max_datagram_bytes
        start = 0
        end = len(buffer)
        sent_any = False
        with memoryview(buffer) as view:
            for _ in range(MAX_DATAGRAMS_PER_PUMP):
                if start >= end:
                    break
                cut = buffer.rfind(b"\n", start, start + limit + 1)
                if cut < start:  # the first line alone is longer than the datagram size
                    cut = buffer.find(b"\n", start)
                    if cut - start > MAX_UDP_PAYLOAD:
                        self.counters["dropped_too_long"] += 1
                        start = cut + 1
                        continue
                try:
                    sock.send(view[start:cut])
                except BlockingIOError:
                    break
                except _REFUSED:
                    # nobody listens there now; the datagram the kernel refused stays queued
                    self._udp_trial = False
                    self.counters["send_errors"] += 1
                    self._failed(now)
                    break
                except OSError as exc:
                    if exc.errno != errno.EMSGSIZE:
                        self.counters["send_errors"] += 1
                        self._failed(now)
                        break
                    self.counters["dropped_too_long"] += buffer.count(b"\n", start, cut + 1)
                    start = cut + 1
                    continue
                lines = buffer.count(b"\n", start, cut) + 1
                self.counters["relayed_lines"] += lines
                self.counters["bytes_sent"] += cut - start
                self.counters["datagrams_sent"] += 1
                sent_any = True
                start = cut + 1
        if start:
            del buffer[:start]
        if sent_any and self._failing_since is not None:
            # the kernel reports "port unreachable" on the send *after* the one that caused it,
            # so a UDP backend counts as back only once a second pump went through as well
            if self._udp_trial:
                self._udp_trial = False
                self._succeeded()
            else:
                self._udp_trial = True

    def _pump_tcp(self, now: float) -> None:
        if self.connected:
            self._notice_remote_close(now)  # so no line is written into a closed connection
            if not self.connected:
                return
        elif not self._connect(now):
            return
        sock = self.sock
        assert sock is not None
        buffer = self.buffer
        while buffer:
            size = min(len(buffer), TCP_WRITE_CHUNK)
            try:
                with memoryview(buffer) as view:
                    sent = sock.send(view[:size])
            except BlockingIOError:
                return
            except OSError:
                self.counters["send_errors"] += 1
                self._drop_connection(now)
                return
            if sent <= 0:
                return
            self.counters["relayed_lines"] += buffer.count(b"\n", 0, sent)
            self.counters["bytes_sent"] += sent
            self._cut_mid_line = buffer[sent - 1] != 0x0A
            del buffer[:sent]
            if sent < size:
                return

    def _notice_remote_close(self, now: float) -> None:
        """Find out, while idle, that the peer closed, so the next line goes to a new
        connection rather than into a dead one."""
        sock = self.sock
        if sock is None:
            return
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and not sock.recv(65536):
                self._drop_connection(now)
        except OSError:
            self._drop_connection(now)

    def _connect(self, now: float) -> bool:
        """Advance a non-blocking connect; True once connected."""
        if self.sock is None:
            try:
                family, sockaddr = self._family_address()
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                self.counters["connect_failures"] += 1
                self._failed(now)
                return False
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            self._connect_deadline = now + self.connect_timeout
            code = sock.connect_ex(sockaddr)
            if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
                self._connect_failed(now)
                return False
            if code == 0:
                return self._connected()
        sock = self.sock
        try:
            _, writable, _ = select.select([], [sock], [], 0)
        except (OSError, ValueError):
            self._connect_failed(now)
            return False
        if not writable:
            if now >= self._connect_deadline:
                self._connect_failed(now)
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            self._connect_failed(now)
            return False
        return self._connected()

    def _connected(self) -> bool:
        self.connected = True
        self.counters["connects"] += 1
        self._succeeded()
        return True

    def _connect_failed(self, now: float) -> None:
        self.counters["connect_failures"] += 1
        self.close()
        self._failed(now)

    def _drop_connection(self, now: float) -> None:
        self.close()
        self._failed(now)
        if self._cut_mid_line:
            # the start of this line went down the dead connection: never send its tail alone
            end = self.buffer.find(b"\n")
            del self.buffer[:end + 1]
            self.counters["dropped_partial"] += 1
            self._cut_mid_line = False

    def stats(self) -> dict[str, int]:
        return {**self.counters, "queued_bytes": len(self.buffer),
                "failing": int(self.failing())}


def now_monotonic() -> float:
    return time.monotonic()
