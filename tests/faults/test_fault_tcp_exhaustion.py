"""Issue 11 item 7: TCP clients cannot exhaust the daemon: a connection cap, an idle timeout,
caps that fit the open-file limit, and running out of descriptors paused, not a log flood."""

from __future__ import annotations

import re
import resource
import socket
import time
from typing import Any

import pytest
from fault_helpers import connect, flushed, open_fds, prefix, status, wait_for

pytestmark = pytest.mark.integration


def closed_by_daemon(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the daemon closed (or reset) this connection within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_one_connection_past_the_cap_is_refused_and_counted(start_fault_daemon: Any) -> None:
    daemon = start_fault_daemon({"flush_interval": 3600, "listeners": [
        {"protocol": "tcp", "max_connections": 5}]})
    kept = [connect(daemon.port) for _ in range(5)]
    wait_for(lambda: status(daemon)["counters"].get("listener.tcp.connections") == 5)
    extra = connect(daemon.port)
    assert closed_by_daemon(extra)
    for sock in kept:  # the five admitted ones still work
        sock.sendall(b"fault.tcp:1|c\n")
    counters = wait_for(lambda: (c := status(daemon)["counters"]).get(
        prefix("tcp", daemon.port) + ".refused") and c)
    assert counters[prefix("tcp", daemon.port) + ".refused"] == 1
    assert counters["listener.tcp.connections"] == 5
    assert status(daemon)["listener_state"] == [{
        "listener": f"tcp 127.0.0.1:{daemon.port}", "open_connections": 5,
        "max_connections": 5, "idle_timeout_seconds": 600, "accepting": True}]
    assert "refused a connection: 5 open, the most max_connections allows" in "".join(
        daemon.stderr)
    for sock in (*kept, extra):
        sock.close()
    assert daemon.stop() == 0
    assert flushed(daemon.records(), "fault.tcp") == 5


def test_an_idle_connection_is_closed_after_the_timeout_and_counted(
        start_fault_daemon: Any) -> None:
    daemon = start_fault_daemon({"flush_interval": 3600, "listeners": [
        {"protocol": "tcp", "idle_timeout_seconds": 1}]})
    idle, busy = connect(daemon.port), connect(daemon.port)
    idle.sendall(b"fault.idle:1|c\nfault.idle:1")  # the second line never ends: cut
    started = time.monotonic()
    end = started + 2.5
    while time.monotonic() < end:  # the busy one keeps talking and stays open
        busy.sendall(b"fault.busy:1|c\n")
        time.sleep(0.2)
    assert closed_by_daemon(idle, timeout=0.1)
    assert not closed_by_daemon(busy, timeout=0.1)
    counters = status(daemon)["counters"]
    assert counters[prefix("tcp", daemon.port) + ".idle_closed"] == 1
    assert counters[prefix("tcp", daemon.port) + ".cut_lines"] == 1
    assert "closed 1 connections idle for 1s (idle_timeout_seconds)" in "".join(daemon.stderr)
    idle.close()
    busy.close()
    assert daemon.stop() == 0
    assert flushed(daemon.records(), "fault.idle") == 1


def test_under_a_low_file_limit_the_cap_is_lowered_and_udp_and_status_keep_working(
        start_fault_daemon: Any) -> None:
    daemon = start_fault_daemon({"flush_interval": 3600}, nofile=64)
    lowered = daemon.wait_for_log("max_connections 1024 lowered to")
    cap = int(re.search(r"lowered to (\d+)", lowered).group(1))  # type: ignore[union-attr]
    assert 0 < cap < 64
    clients = []
    for _ in range(cap + 40):
        clients.append(connect(daemon.port))
        daemon.send_udp(b"fault.udp:1|c")
    refused_key = prefix("tcp", daemon.port) + ".refused"
    wait_for(lambda: status(daemon)["counters"].get(refused_key) == 40)
    counters = status(daemon)["counters"]
    assert counters.get(refused_key) == 40, "".join(daemon.stderr)
    assert counters["listener.tcp.connections"] == cap
    assert open_fds(daemon.proc.pid) < 64
    for sock in clients:
        sock.close()
    assert daemon.stop() == 0
    assert flushed(daemon.records(), "fault.udp") == cap + 40
    assert len(daemon.stderr) < 20, "".join(daemon.stderr)


def test_out_of_descriptors_pauses_accepting_with_one_line_and_the_rest_keeps_working(
        start_fault_daemon: Any) -> None:
    daemon = start_fault_daemon({"flush_interval": 3600})
    pid = daemon.proc.pid
    # Leave the running daemon three descriptors: accepting clients soon fails with EMFILE.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 3,) * 2)
    clients = [connect(daemon.port) for _ in range(30)]
    daemon.wait_for_log("cannot accept: Too many open files")
    for _ in range(100):
        daemon.send_udp(b"fault.udp:1|c")
    time.sleep(3)  # several accept retries, each of which would have logged a traceback
    try:
        answer = status(daemon)  # answered on the admin socket's spare descriptor
    except AssertionError:
        raise AssertionError("".join(daemon.stderr)) from None
    assert answer["counters"][prefix("tcp", daemon.port) + ".accept_paused"] >= 2
    log = "".join(daemon.stderr)
    assert log.count("cannot accept") == 1 and "Traceback" not in log
    for sock in clients:
        sock.close()
    assert daemon.stop() == 0, "".join(daemon.stderr)
    assert flushed(daemon.records(), "fault.udp") == 100
