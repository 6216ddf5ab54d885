"""The admin socket: ask a running daemon what it is doing.

A Unix stream socket at ``<state_dir>/admin.sock``, mode 0600 (only the daemon's user and
root may ask). One request per connection: the client sends a command line, the daemon answers
with one JSON document and closes.

    status   the daemon's state: version, pid, uptime, listeners, last flush, every self-metric
             counter since start, each forwarder's stats
    reload   the same as SIGHUP (it sends SIGHUP to the daemon itself, so there is one reload
             path); answers {"reload": "requested"}

``pystatsd --status`` is the client."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("pystatsd.admin")

SOCKET_NAME = "admin.sock"


class NotRunning(ConnectionError):
    """No daemon answers on the admin socket."""


class AdminServer:
    """Serves ``status`` (from the ``describe`` callable) and ``reload`` on a Unix socket."""

    def __init__(self, path: Path, describe: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        describe_state = describe

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                command = self.rfile.readline(256).decode("ascii", "replace").strip()
                answer: dict[str, Any]
                if command == "status":
                    answer = describe_state()
                elif command == "reload":
                    os.kill(os.getpid(), signal.SIGHUP)
                    answer = {"reload": "requested"}
                else:
                    answer = {"error": f"unknown command {command[:40]!r}",
                              "commands": ["status", "reload"]}
                self.wfile.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n")

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
            self._server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
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
