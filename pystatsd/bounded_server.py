"""Threaded socket servers for the admin interfaces, with a bound on open connections and an
idle timeout on each, so a stuck or hostile client cannot pile up threads."""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("pystatsd.admin")


class BoundedServerMixin(socketserver.ThreadingMixIn):
    """Serves at most ``max_connections`` at once; one more gets ``refusal`` and is closed."""

    daemon_threads = True
    block_on_close = False
    max_connections = 16
    refusal = b"ERROR too many connections\n"

    def init_bound(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.sendall(self.refusal)
            except OSError:
                pass
            self.shutdown_request(request)  # type: ignore[attr-defined]
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


class BoundedTCPServer(BoundedServerMixin, socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler],
                 max_connections: int) -> None:
        self.init_bound(max_connections)
        host, port = address
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)


class BoundedUnixServer(BoundedServerMixin, socketserver.UnixStreamServer):
    """A Unix stream socket created mode 0600: only the daemon's user (and root) connect."""

    def __init__(self, path: Path, handler: type[socketserver.BaseRequestHandler],
                 max_connections: int) -> None:
        self.init_bound(max_connections)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1.0)
                    probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that did not stop cleanly
            else:
                raise FileExistsError(f"{path}: another pystatsd with this state_dir answers")
        old_umask = os.umask(0o177)
        try:
            super().__init__(str(path), handler)
        finally:
            os.umask(old_umask)

    def server_close(self) -> None:
        super().server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class ServingThread:
    """Runs one server's ``serve_forever`` in a daemon thread; ``stop`` ends and closes it."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
