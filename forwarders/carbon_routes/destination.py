"""One carbon destination: a bounded queue of lines, an optional disk spool, and a
non-blocking TCP connection that drains them as plaintext or pickle frames.

Only the forwarder's sender thread touches a destination. Lines wait in memory (at most
``queue_lines``; past that new ones are dropped and counted). Each pump cuts the queue into
frames (plaintext: lines joined; pickle: carbon's 4-byte length + pickled list, at most
``per_frame`` datapoints) and writes what the socket takes. A connection that dies inside a
frame drops the rest of that frame (counted ``dropped_partial``): carbon discards a cut line or
frame anyway, and resending its head would duplicate it. Connects are retried with a backoff
doubling from ``backoff_min`` to ``backoff_max``.

With a spool, while the destination is down the queue moves to the spool (the Kafka
forwarder's :class:`~forwarders.spool.Spool`: on disk, bounded, kept across restarts),
and at close what is still queued is spooled rather than lost. Once connected, the spool is
sent before the queue, oldest first, so order is kept; a record leaves the spool only once
every frame made from it has been written to the socket.
"""

from __future__ import annotations

import errno
import logging
import pickle
import select
import socket
import struct
from collections import deque
from pathlib import Path

from forwarders.backoff import Backoff
from forwarders.spool import Record, Spool

__all__ = ["Destination"]

_WRITE_CHUNK = 256 * 1024
_FRAME_LINES = 500
_SPOOL_TOPIC = "carbon-plaintext"


def _pickle_frame(lines: list[bytes]) -> bytes:
    points = []
    for line in lines:
        path, value, stamp = line.split(b" ")
        points.append((path.decode(), (float(stamp), float(value))))
    body = pickle.dumps(points, protocol=2)
    return struct.pack(">I", len(body)) + body


class Destination:
    """A destination ``host:port`` (``instance`` names it on a hash ring)."""

    def __init__(self, host: str, port: int, *, instance: str | None, pickle: bool,
                 queue_lines: int, backoff_min: float, backoff_max: float,
                 connect_timeout: float, spool_dir: Path | None = None,
                 spool_max_bytes: int = 0, raw: bool = False) -> None:
        self.host = host
        self.port = port
        self.identity: str | None = None  # set by the routes that name it (same one: kept)
        self.instance = instance
        self.pickle = pickle
        self.raw = raw  # items are whole commands, terminated by their sender (no spool then)
        self.queue_lines = queue_lines
        self.backoff = Backoff(backoff_min, backoff_max)
        self.connect_timeout = connect_timeout
        self.spool_dir = spool_dir
        self.spool_max_bytes = spool_max_bytes
        self.spool: Spool | None = None
        self.queue: deque[bytes] = deque()
        self._frames: deque[tuple[bytes, int]] = deque()  # (frame, lines in it)
        self._frame_offset = 0
        self._frames_from_spool = False  # the frames in flight are the spool's oldest record
        self._sock: socket.socket | None = None
        self._connecting = False
        self._connect_deadline = 0.0
        self.connected = False
        self._shut = False
        self.counters = {"enqueued": 0, "sent": 0, "dropped_queue_full": 0,
                         "dropped_partial": 0, "connects": 0, "connect_failures": 0,
                         "send_errors": 0, "spooled": 0, "spool_sent": 0, "spool_dropped": 0}

    @property
    def key(self) -> str:
        """``host_port`` (and ``_instance``) with dots and colons made ``_``: a stats key."""
        raw = f"{self.host}_{self.port}" + (f"_{self.instance}" if self.instance else "")
        return raw.replace(".", "_").replace(":", "_")

    @property
    def label(self) -> str:
        """``host:port`` (and ``:instance``), for logs."""
        return f"{self.host}:{self.port}" + (f":{self.instance}" if self.instance else "")

    @property
    def down(self) -> bool:
        """Neither connected nor connecting: waiting to retry, or not tried yet."""
        return not self.connected and not self._connecting

    def open(self) -> None:
        if self.spool_dir is not None and self.spool_max_bytes > 0 and not self.raw:
            self.spool = Spool(self.spool_dir, self.spool_max_bytes)

    # -- queue ----------------------------------------------------------------------------
    def enqueue(self, line: bytes) -> None:
        if len(self.queue) >= self.queue_lines:
            self.counters["dropped_queue_full"] += 1
            return
        self.queue.append(line)
        self.counters["enqueued"] += 1

    def pending(self) -> int:
        """Lines in memory (queued or in unsent frames); the spool's are not counted."""
        return len(self.queue) + sum(lines for _, lines in self._frames)

    def discard(self) -> int:
        """At close: spool what is in memory when there is a spool, else drop it; return how
        many lines were lost."""
        lines = list(self.queue)
        self.queue.clear()
        lost = 0
        if self._frames and not self._frames_from_spool:
            lost += sum(n for _, n in self._frames)  # frames of plaintext: cannot re-cut them
        self._frames.clear()
        self._frame_offset = 0
        if self.spool is not None and lines:
            lost += self._spool_lines(lines)
        else:
            lost += len(lines)
        return lost

    def close(self) -> None:
        """For good: a round still running past its forwarder's close connects no more."""
        self._shut = True
        self._drop_connection()
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def stats(self) -> dict[str, int]:
        return {**self.counters, "queued": self.pending(),
                "spool_bytes": self.spool.bytes if self.spool is not None else 0,
                "up": int(self.connected)}

    # -- sending --------------------------------------------------------------------------
    def pump(self, now: float) -> int:
        """Send what the connection takes without blocking; return how many lines went."""
        before = self.counters["sent"]
        self._pump(now)
        return self.counters["sent"] - before

    def log_unsent(self, log: logging.Logger) -> int:
        """``debug_mode``: log each queued line (a raw command as bytes) instead of sending
        it; return how many."""
        logged = 0
        while self.queue:
            item = self.queue.popleft()
            log.info("debug_mode, not sent to %s:%d: %r", self.host, self.port,
                     item if self.raw else item.decode(errors="replace"))
            logged += 1
        return logged

    def _pump(self, now: float) -> None:
        if self._shut:
            return
        if not self.connected:
            if self.backoff.waiting(now) or not self._connect(now):
                if self.spool is not None and not self._connecting and self.queue:
                    # down: the queue waits on disk, not in memory
                    self._spool_lines(list(self.queue))
                    self.queue.clear()
                return
        elif _closed_by_peer(self._sock):
            self._failed(now)
            return
        while True:
            if not self._frames and not self._cut_frames():
                return
            if not self._write(now):
                return

    def _cut_frames(self) -> bool:
        """Fill the frames to send: the spool's oldest record first, else the queue."""
        lines: list[bytes]
        if self.spool is not None and (record := self.spool.peek()) is not None:
            lines = record.value.split(b"\n")
            self._frames_from_spool = True
        elif self.queue:
            count = min(len(self.queue), _FRAME_LINES * 20)
            lines = [self.queue.popleft() for _ in range(count)]
            self._frames_from_spool = False
        else:
            return False
        for start in range(0, len(lines), _FRAME_LINES):
            chunk = lines[start:start + _FRAME_LINES]
            if self.raw:
                frame = b"".join(chunk)
            else:
                frame = _pickle_frame(chunk) if self.pickle else b"\n".join(chunk) + b"\n"
            self._frames.append((frame, len(chunk)))
        return True

    def _write(self, now: float) -> bool:
        """Write frames until the socket is full; False when it is (or failed)."""
        sock = self._sock
        assert sock is not None
        while self._frames:
            frame, lines = self._frames[0]
            try:
                with memoryview(frame) as view:
                    sent = sock.send(view[self._frame_offset:self._frame_offset + _WRITE_CHUNK])
            except BlockingIOError:
                return False
            except OSError:
                self.counters["send_errors"] += 1
                self._failed(now)
                return False
            self._frame_offset += sent
            if self._frame_offset < len(frame):
                continue
            self._frames.popleft()
            self._frame_offset = 0
            self.counters["sent"] += lines
            if self._frames_from_spool:
                self.counters["spool_sent"] += lines
        if self._frames_from_spool and self.spool is not None:
            self.spool.pop()  # every frame of the record is written
            self._frames_from_spool = False
        return True

    def _spool_lines(self, lines: list[bytes]) -> int:
        assert self.spool is not None
        if self.spool.append([Record(_SPOOL_TOPIC, None, b"\n".join(lines))]):
            self.counters["spool_dropped"] += len(lines)
            return len(lines)
        self.counters["spooled"] += len(lines)
        return 0

    def _connect(self, now: float) -> bool:
        if self._sock is None:
            try:
                family, _, _, _, address = socket.getaddrinfo(self.host, self.port, 0,
                                                              socket.SOCK_STREAM)[0]
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                self.counters["connect_failures"] += 1
                self._failed(now)
                return False
            sock.setblocking(False)
            self._sock = sock
            self._connecting = True
            self._connect_deadline = now + self.connect_timeout
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
                self.counters["connect_failures"] += 1
                self._failed(now)
                return False
        sock = self._sock
        _, writable, _ = select.select([], [sock], [], 0)
        if not writable:
            if now >= self._connect_deadline:
                self.counters["connect_failures"] += 1
                self._failed(now)
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            self.counters["connect_failures"] += 1
            self._failed(now)
            return False
        self._connecting = False
        self.connected = True
        self.counters["connects"] += 1
        self.backoff.succeeded()
        return True

    def _failed(self, now: float) -> None:
        self._drop_connection()
        self.backoff.failed(now)

    def _drop_connection(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.connected = False
        self._connecting = False
        if self._frames_from_spool:
            # the record is still in the spool and is sent again whole: carbon keeps one value
            # per path and timestamp, so what already arrived is stored once
            self._frames.clear()
            self._frames_from_spool = False
        elif self._frame_offset and self._frames:
            # the head of this frame went down the dead connection: never send its tail alone
            _, lines = self._frames.popleft()
            self.counters["dropped_partial"] += lines
        self._frame_offset = 0


def _closed_by_peer(sock: socket.socket | None) -> bool:
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        # carbon never writes to a relay: something to read is its EOF (or a reset)
        return bool(readable) and sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
