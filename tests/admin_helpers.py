"""Talking to a running daemon's admin interfaces as an operator's script does."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


class Console:
    """One console connection (TCP port or Unix socket path), command by command."""

    def __init__(self, where: int | Path, timeout: float = 5.0) -> None:
        if isinstance(where, Path):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(where))
        else:
            self.sock = socket.create_connection(("127.0.0.1", where), timeout=timeout)
        self.buffer = b""

    def ask(self, command: str, until: bytes = b"\n") -> str:
        """Send one command line; return the answer up to and including ``until``."""
        self.sock.sendall(command.encode() + b"\n")
        while until not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {self.buffer!r}")
            self.buffer += chunk
        answer, _, self.buffer = self.buffer.partition(until)
        return (answer + until).decode()

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http(port: int, path: str, method: str = "GET",
         token: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of one request to the admin HTTP port."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
