"""Carbon's two TCP inputs: plaintext lines and pickle frames, and one blocking connection.

Plaintext is ``path value timestamp\\n``; pickle is a 4-byte big-endian length and a pickled
list of ``(path, (timestamp, value))``, at most ``per_frame`` datapoints a frame (carbon's
``MAX_DATAPOINTS_PER_MESSAGE`` is 500, and its receiver refuses frames over 1 MiB). Paths
reaching here are already safe (:mod:`forwarders.graphite.naming`)."""

from __future__ import annotations

import pickle
import select
import socket
import struct
import time
from collections.abc import Sequence

from forwarders.backoff import Backoff

__all__ = ["CarbonConnection", "Datapoint", "encode_pickle", "encode_plaintext"]

Datapoint = tuple[str, float, int]
"""(path, value, timestamp in whole seconds)."""


def encode_plaintext(points: Sequence[Datapoint]) -> bytes:
    return "".join(f"{path} {value!r} {stamp}\n" for path, value, stamp in points).encode()


def encode_pickle(points: Sequence[Datapoint], per_frame: int) -> bytes:
    frames = []
    for start in range(0, len(points), per_frame):
        body = pickle.dumps([(path, (stamp, value)) for path, value, stamp
                             in points[start:start + per_frame]], protocol=2)
        frames.append(struct.pack(">I", len(body)) + body)
    return b"".join(frames)


class CarbonConnection:
    """A TCP connection to one carbon input, made on demand, dropped on any error, and not
    retried before the backoff (``backoff_min`` doubling to ``backoff_max``) has passed."""

    def __init__(self, host: str, port: int, *, connect_timeout: float, send_timeout: float,
                 backoff_min: float, backoff_max: float) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.backoff = Backoff(backoff_min, backoff_max)
        self.connects = 0
        self._sock: socket.socket | None = None
        self._shut = False

    def ready(self) -> bool:
        """False while a failed attempt's backoff runs: a send now would fail without trying."""
        return self._sock is not None or not self.backoff.waiting(time.monotonic())

    def send(self, data: bytes) -> None:
        """Write ``data`` whole or raise ``OSError`` (the connection is dropped then)."""
        if not self.ready():
            raise ConnectionError(f"carbon {self.host}:{self.port}: backing off after a failure")
        try:
            sock = self._connected()
            sock.sendall(data)
        except OSError:
            self._failed()
            raise
        self.backoff.succeeded()

    def shut(self) -> None:
        """Close for good: a send still running past its forwarder's close makes no new
        connection (it would outlive the forwarder)."""
        self._shut = True
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connected(self) -> socket.socket:
        sock = self._sock
        if sock is not None and _closed_by_peer(sock):
            # carbon restarted since the last flush: writing into the dead connection would
            # "succeed" into the kernel's buffer and be lost
            self.close()
            sock = None
        if sock is None:
            if self._shut:
                raise ConnectionError(f"carbon {self.host}:{self.port}: forwarder closed")
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.send_timeout)
            self._sock = sock
            self.connects += 1
        return sock

    def _failed(self) -> None:
        self.close()
        self.backoff.failed(time.monotonic())


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        # carbon never writes to us: something to read is its EOF (or a reset)
        return bool(readable) and sock.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
