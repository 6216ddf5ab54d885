"""The admin socket: ask a running daemon what it is doing.

A Unix stream socket at ``<state_dir>/admin.sock``, mode 0600 (only the daemon's user and
root may ask). One request per connection: the client sends a command line, the daemon answers
with one JSON document and closes.

    status   the daemon's state: version, pid, uptime, listeners, last flush, every self-metric
             counter since start, each forwarder's stats
    reload   the same as SIGHUP (it sends SIGHUP to the daemon itself, so there is one reload
             path); answers {"reload": "requested"}

``pystatsd --status`` is the client.

A client gets :data:`REQUEST_TIMEOUT` seconds to send its command and take the answer, and at
most :data:`MAX_CLIENTS` are served at once (one more is told the daemon is busy), so idle or
slow clients cannot pile up threads. When the process is out of file descriptors, one is kept
in reserve so ``--status`` can still say what is going on."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("pystatsd.admin")

SOCKET_NAME = "admin.sock"
REQUEST_TIMEOUT = 5.0
MAX_CLIENTS = 8
SPARE_RETRIES = 40
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class NotRunning(ConnectionError):
    """No daemon answers on the admin socket."""


class AdminServer:
    """Serves ``status`` (from the ``describe`` callable) and ``reload`` on a Unix socket."""

    def __init__(self, path: Path, describe: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        describe_state = describe

        class Handler(socketserver.StreamRequestHandler):
            timeout = REQUEST_TIMEOUT

            def handle(self) -> None:
                try:
                    command = self.rfile.readline(256).decode("ascii", "replace").strip()
                except OSError:  # silent past REQUEST_TIMEOUT, or gone: nothing to answer
                    return
                answer: dict[str, Any]
                if command == "status":
                    answer = describe_state()
                elif command == "reload":
                    os.kill(os.getpid(), signal.SIGHUP)
                    answer = {"reload": "requested"}
                else:
                    answer = {"error": f"unknown command {command[:40]!r}",
                              "commands": ["status", "reload"]}
                try:
                    self.wfile.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n")
                except OSError:
                    pass

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:  # a client gone, or too slow to take its answer
                    pass

        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            try:
                ask(path, "status", timeout=1.0)
            except (OSError, ValueError):
                path.unlink()  # left by a daemon that did not stop cleanly
            else:
                raise FileExistsError(errno.EADDRINUSE,
                                      "another pystatsd with this state_dir answers there")
        old_umask = os.umask(0o177)
        try:
            self._server = _BoundedServer(str(path), Handler)
        finally:
            os.umask(old_umask)
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class _BoundedServer(socketserver.ThreadingUnixStreamServer):
    """A thread per request, at most :data:`MAX_CLIENTS` at once, and a spare descriptor
    given up to accept a client when the process has none left."""

    daemon_threads = True

    def __init__(self, path: str, handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(path, handler)
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._spare: int | None = _open_spare()
        self._spare_lock = threading.Lock()
        self._using_spare: socket.socket | None = None
        self._last_warning = 0.0

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return self.socket.accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                raise
            with self._spare_lock:
                spare, self._spare = self._spare, None
            if spare is None:
                self._warn(f"cannot accept an admin client: {exc.strerror}")
                time.sleep(0.5)  # the socket stays readable: do not spin on it
                raise
            os.close(spare)
            try:
                conn, address = self._accept_soon()
            except OSError:
                self._restore_spare()
                raise
            self._warn("out of file descriptors: answering an admin client on the spare one")
            self._using_spare = conn
            return conn, address

    def _accept_soon(self) -> tuple[socket.socket, Any]:
        """Accept, retrying briefly: another thread may take the descriptor just freed (the
        TCP listener, which then refuses its client and gives it back)."""
        for _ in range(SPARE_RETRIES):
            try:
                return self.socket.accept()
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    raise
                time.sleep(0.005)
        return self.socket.accept()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(REQUEST_TIMEOUT)
                request.sendall(orjson.dumps({"error": f"busy: {MAX_CLIENTS} admin requests "
                                                       "in progress, try again"}) + b"\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        if request is self._using_spare:
            self._using_spare = None
            self._restore_spare()

    def server_close(self) -> None:
        super().server_close()
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            os.close(spare)

    def _restore_spare(self) -> None:
        for _ in range(SPARE_RETRIES):
            with self._spare_lock:
                if self._spare is None:
                    self._spare = _open_spare()
                if self._spare is not None:
                    return
            time.sleep(0.005)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning("admin: %s", message)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def ask(path: Path, command: str = "status", timeout: float = 5.0) -> dict[str, Any]:
    """Send ``command`` to the daemon whose admin socket is ``path``; return its answer.

    Raises :class:`NotRunning` when nothing listens there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotRunning(f"no pystatsd answers at {path}") from exc
    answer: dict[str, Any] = orjson.loads(b"".join(chunks))
    return answer
