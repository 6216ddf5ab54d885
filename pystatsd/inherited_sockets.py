"""Listening sockets handed over by a hot restart's predecessor (see pystatsd.hot_restart).

The predecessor lists them in :data:`SOCKETS_ENV`, a JSON map ``proto|address|port`` ->
inherited descriptor; a listener whose spec is in it takes that socket instead of binding."""

from __future__ import annotations

import os
import socket

import orjson

SOCKETS_ENV = "PYSTATSD_INHERITED_SOCKETS"

_inherited: dict[str, socket.socket] | None = None


def socket_key(protocol: str, address: str, port: int) -> str:
    return f"{protocol}|{address}|{port}"


def inherited_socket(protocol: str, address: str, port: int) -> socket.socket | None:
    """The bound socket the predecessor handed over for this listener spec, if any."""
    global _inherited
    if _inherited is None:
        fds = orjson.loads(os.environ.pop(SOCKETS_ENV, "{}"))
        _inherited = {key: socket.socket(fileno=int(fd)) for key, fd in fds.items()}
    return _inherited.pop(socket_key(protocol, address, port), None)
