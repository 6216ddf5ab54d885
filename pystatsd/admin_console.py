"""The text console's listeners: TCP (Etsy statsd's management port, off by default) and a
0600 Unix socket in ``state_dir`` (on by default; no token needed there).

Line by line, like ``nc`` or ``telnet`` sessions and Etsy's and lyft's scripts expect: each
command line gets its answer (see :mod:`pystatsd.console_commands`); the connection stays open
until ``quit``, the client closes, or it is idle for ``admin.connection_timeout``."""

from __future__ import annotations

import logging
import socketserver
from pathlib import Path

from pystatsd.admin_auth import TokenGuard
from pystatsd.admin_control import AdminControl
from pystatsd.bounded_server import BoundedTCPServer, BoundedUnixServer, ServingThread
from pystatsd.console_commands import ConsoleSession

log = logging.getLogger("pystatsd.admin")

SOCKET_NAME = "console.sock"
MAX_LINE = 4096


def _handler(control: AdminControl, guard: TokenGuard, trusted: bool,
             idle_timeout: float) -> type[socketserver.StreamRequestHandler]:
    class ConsoleHandler(socketserver.StreamRequestHandler):
        timeout = idle_timeout  # a read that waits longer ends the session

        def handle(self) -> None:
            session = ConsoleSession(control, guard, trusted)
            try:
                while line := self.rfile.readline(MAX_LINE):
                    try:
                        text = line.decode("utf-8")
                    except UnicodeDecodeError:
                        self.wfile.write(b"ERROR\n")
                        continue
                    if not text.strip():
                        continue
                    try:
                        answer, close = session.answer(text)
                    except Exception:  # a bug in one command must not end the console
                        log.exception("console command %r failed", text.strip()[:80])
                        answer, close = "ERROR internal error\n", False
                    self.wfile.write(answer.encode("utf-8", "replace"))
                    if close:
                        return
            except (TimeoutError, ConnectionError):
                return

    return ConsoleHandler


def tcp_console(control: AdminControl, guard: TokenGuard, address: str, port: int,
                max_connections: int, timeout: float) -> ServingThread:
    server = BoundedTCPServer((address, port), _handler(control, guard, False, timeout),
                              max_connections)
    return ServingThread(server, "admin-console")


def unix_console(control: AdminControl, guard: TokenGuard, state_dir: Path,
                 max_connections: int, timeout: float) -> ServingThread:
    server = BoundedUnixServer(state_dir / SOCKET_NAME, _handler(control, guard, True, timeout),
                               max_connections)
    return ServingThread(server, "admin-console-unix")
