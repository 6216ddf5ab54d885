"""Unix domain socket listeners: ``unixgram`` (one payload per datagram, as DogStatsD's
default UDS mode) and ``unix`` (a stream of frames, each a 4-byte little-endian length and
that many bytes, DogStatsD's stream framing).

Both create their socket file at ``path`` with ``socket_mode`` and, when set,
``socket_owner``; a socket file left by a daemon that died is removed at start, a live one (a
second daemon) or a file that is not a socket stops the start with one line naming the path;
the file is removed again at stop. Payloads go to the same ``deliver`` as the UDP and TCP
listeners'; a unix listener defaults to ``gauge_sign: absolute``, since only DogStatsD clients
use one."""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import threading
import time
from typing import Any

from pystatsd.listeners import Deliver, ListenerError, UdpListener, _Listener
from pystatsd.selfstats import SelfStats

log = logging.getLogger("pystatsd.listeners")

_FRAME_LENGTH = struct.Struct("<I")
ACCEPT_POLL_SECONDS = 0.2
"""How often the stream listener's threads look up from a blocking accept or receive to see
whether the daemon stops (the watchdog's sign of life too)."""


def open_unix_socket(spec: dict[str, Any], kind: int) -> socket.socket:
    """Bind a Unix socket of ``kind`` at the spec's ``path`` (a stale socket file removed
    first), give it ``socket_mode`` and ``socket_owner``; raise :class:`ListenerError`."""
    path = spec.get("path")
    where = f"{spec['protocol']} listener"
    if not path:
        raise ListenerError(f"{where}: `path` is required for a unix socket")
    _remove_stale(path, where)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
        os.chmod(path, int(spec.get("socket_mode", "0722"), 8))
        owner = spec.get("socket_owner")
        if owner:
            user, _, group = owner.partition(":")
            uid = pwd.getpwnam(user).pw_uid if user else -1
            gid = grp.getgrnam(group).gr_gid if group else -1
            os.chown(path, uid, gid)
    except (OSError, KeyError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) else f"no such user or group {exc}"
        raise ListenerError(f"{where} {path}: cannot create the socket: {reason}") from exc
    return sock


def _remove_stale(path: str, where: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a file of another kind."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"{where} {path}: exists and is not a socket; not removing it")
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EPROTOTYPE, errno.ENOENT):
                    continue
                raise ListenerError(f"{where} {path}: cannot check the socket file: "
                                    f"{exc.strerror}") from exc
            raise ListenerError(f"{where} {path}: another process is listening on it")
    os.unlink(path)
    log.info("%s: removed the stale socket file %s (no one listened on it)", where, path)


def _unlink_own(path: str, sock_inode: int | None) -> None:
    """Remove the socket file at stop, unless another process has made a new one there."""
    try:
        if sock_inode is None or os.lstat(path).st_ino == sock_inode:
            os.unlink(path)
    except OSError:
        pass


class UnixDatagramListener(UdpListener):
    """``protocol: unixgram``: the UDP listener's receive loop on a Unix datagram socket (the
    ``datadog`` client's ``socket_path``, ``hot-shots``' ``protocol: 'uds'``)."""

    GAUGE_SIGN_DEFAULT = "absolute"

    def _open_socket(self, spec: dict[str, Any]) -> socket.socket:
        sock = open_unix_socket(spec, socket.SOCK_DGRAM)
        self._inode = os.lstat(spec["path"]).st_ino
        return sock

    def _bound_address(self) -> tuple[str, int]:
        return self.spec["path"], 0

    def _wake(self) -> None:
        try:
            self._sock.sendto(b"", self.spec["path"])
        except OSError as exc:
            log.warning("cannot wake the unixgram listener on %s: %s", self.spec["path"], exc)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        _unlink_own(self.spec["path"], self._inode)


class UnixStreamListener(_Listener):
    """``protocol: unix``: connections on a Unix stream socket, each a sequence of frames (a
    4-byte little-endian length, then the payload: one or more lines). A frame longer than
    ``max_datagram_bytes`` loses the framing: it is counted as ``too_long`` and that
    connection closed. One thread accepts, one per connection reads (at most
    ``max_connections``; one more is closed at once and counted as ``refused``)."""

    GAUGE_SIGN_DEFAULT = "absolute"

    def __init__(self, spec: dict[str, Any], deliver: Deliver, stats: SelfStats) -> None:
        super().__init__(spec, deliver, stats)
        self._sock.listen(128)
        self._sock.settimeout(ACCEPT_POLL_SECONDS)
        self._stopping = threading.Event()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="unix-listener",
                                        daemon=True)

    def _open_socket(self, spec: dict[str, Any]) -> socket.socket:
        sock = open_unix_socket(spec, socket.SOCK_STREAM)
        self._inode = os.lstat(spec["path"]).st_ino
        return sock

    def _bound_address(self) -> tuple[str, int]:
        return self.spec["path"], 0

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"listener": self.label, "open_connections": len(self._connections)}

    def start(self) -> None:
        self._thread.start()

    def probe(self) -> None:
        """The accept loop sets ``last_alive`` at least every ``ACCEPT_POLL_SECONDS``."""

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            self.last_alive = time.monotonic()
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                self._stats.incr(self.prefix + ".errors")
                log.error("%s: accept failed: %s", self.label, exc)
                time.sleep(ACCEPT_POLL_SECONDS)
                continue
            with self._lock:
                if len(self._connections) >= self.spec["max_connections"]:
                    conn.close()
                    self._stats.incr(self.prefix + ".refused")
                    continue
                reader = threading.Thread(target=self._read, args=(conn,),
                                          name="unix-connection", daemon=True)
                self._connections[conn] = reader
            reader.start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(ACCEPT_POLL_SECONDS)
        limit = self.spec["max_datagram_bytes"]
        pending = b""
        try:
            while True:
                try:
                    chunk = conn.recv(262144)
                except TimeoutError:
                    if self._stopping.is_set():
                        return
                    continue
                if not chunk:
                    return
                self.bytes_received += len(chunk)
                pending += chunk
                while len(pending) >= 4:
                    (length,) = _FRAME_LENGTH.unpack_from(pending)
                    if length > limit:
                        self._stats.reject("too_long", f"{self.label}: a frame of {length} "
                                           f"bytes (max_datagram_bytes {limit}); closing the "
                                           "connection, whose framing is lost")
                        return
                    if len(pending) < 4 + length:
                        break
                    frame, pending = pending[4:4 + length], pending[4 + length:]
                    if frame:
                        self._deliver_frame(frame)
        except OSError as exc:
            if not self._stopping.is_set():
                log.warning("%s: a connection failed: %s", self.label, exc)
        finally:
            if pending:
                self._stats.incr(self.prefix + ".cut_frames")
            conn.close()
            with self._lock:
                self._connections.pop(conn, None)

    def _deliver_frame(self, frame: bytes) -> None:
        try:
            self._deliver(frame)
        except Exception:  # whatever a payload does, the listener must keep receiving
            self._stats.incr(self.prefix + ".ingest_errors")
            log.exception("ingest failed for a %d-byte frame", len(frame))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting; each connection reads what its client already sent (until a
        receive waits ``ACCEPT_POLL_SECONDS``), then closes."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            readers = list(self._connections.values())
        for reader in readers:
            reader.join(timeout)
        self._sock.close()
        _unlink_own(self.spec["path"], self._inode)


UNIX_LISTENERS: dict[str, type[_Listener]] = {
    "unixgram": UnixDatagramListener,
    "unix": UnixStreamListener,
}
