"""Issue 11 item 7, the admin socket: idle clients are timed out and cannot pile up threads."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import status

from pystatsd import admin

pytestmark = pytest.mark.integration


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_idle_admin_clients_are_bounded_and_timed_out(start_fault_daemon: Any,
                                                       tmp_path: Path) -> None:
    daemon = start_fault_daemon({"flush_interval": 3600})
    path = tmp_path / "state" / admin.SOCKET_NAME
    before = threads(daemon.proc.pid)
    idle = []
    for _ in range(40):  # connect, say nothing
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        idle.append(sock)
    time.sleep(0.5)
    assert threads(daemon.proc.pid) <= before + admin.MAX_CLIENTS
    answers = []
    started = time.monotonic()
    for sock in idle:
        sock.settimeout(admin.REQUEST_TIMEOUT + 5)
        answers.append(sock.recv(65536))
    waited = time.monotonic() - started
    busy = [a for a in answers if a and "busy" in json.loads(a)["error"]]
    assert len(busy) == 40 - admin.MAX_CLIENTS  # told at once
    assert answers.count(b"") == admin.MAX_CLIENTS  # closed at the timeout, with no answer
    assert waited < admin.REQUEST_TIMEOUT + 3
    for sock in idle:
        sock.close()
    assert status(daemon)["pid"] == daemon.proc.pid
    assert threads(daemon.proc.pid) <= before + 1
    assert "Traceback" not in "".join(daemon.stderr)
    assert daemon.stop() == 0
