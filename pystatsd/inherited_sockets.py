"""Listening sockets handed over by a hot restart's predecessor (see pystatsd.hot_restart).

The predecessor lists them in :data:`SOCKETS_ENV`, a JSON map ``proto|address|port`` ->
inherited descriptor; a listener whose spec is in it takes that socket instead of binding."""

from __future__ import annotations

import os
import socket

import orjson

SOCKETS_ENV = "PYSTATSD_INHERITED_SOCKETS"

_inherited: dict[str, socket.socket] | None = None


def socket_key(protocol: str, address: str, port: int, member: int = 0) -> str:
    """``member``: which of a listener's ``SO_REUSEPORT`` group (pystatsd.workers), 0 for the
    one socket of a single-process daemon, so that its key is the same either way."""
    return f"{protocol}|{address}|{port}" + (f"#{member}" if member else "")


def inherited_socket(protocol: str, address: str, port: int,
                     member: int = 0) -> socket.socket | None:
    """The bound socket the predecessor handed over for this listener spec, if any."""
    global _inherited
    if _inherited is None:
        fds = orjson.loads(os.environ.pop(SOCKETS_ENV, "{}"))
        _inherited = {key: socket.socket(fileno=int(fd)) for key, fd in fds.items()}
    return _inherited.pop(socket_key(protocol, address, port, member), None)


def close_unclaimed() -> int:
    """Close the inherited sockets no listener took (a successor with fewer receive workers);
    how many. What their buffers held is lost: the kernel spreads over the others from now."""
    global _inherited
    left = list((_inherited or {}).values())
    for sock in left:
        sock.close()
    _inherited = {}
    return len(left)
