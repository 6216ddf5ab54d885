"""What the fault tests share: asking the daemon, reading what the kernel says about it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[2]


class DaemonProcess(Protocol):
    """What the tests use of tests/conftest.py's DaemonProcess."""

    config_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    stderr: list[str]

    def wait_for_log(self, needle: str, timeout: float = 15.0) -> str: ...
    def send_udp(self, *payloads: bytes, port: int | None = None) -> None: ...
    def stop(self, timeout: float = 20.0) -> int: ...
    def records(self) -> list[dict[str, Any]]: ...
    def status(self) -> dict[str, Any]: ...


def status(daemon: DaemonProcess) -> dict[str, Any]:
    """What ``pystatsd --status`` prints for the daemon (asked on its admin socket from this
    process: see tests/conftest.py's DaemonProcess.status)."""
    return daemon.status()


def wait_for(what: Callable[[], Any], timeout: float = 15.0, every: float = 0.1) -> Any:
    """Call ``what`` until it returns something true; return that."""
    end = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > end:
            return value
        time.sleep(every)


def flushed(records: list[dict[str, Any]], name: str) -> float:
    """The sum over every flush of one counter's count (a self-metric or a client's)."""
    return sum(r["stats"]["count"] for r in records if r["name"] == name)


def prefix(protocol: str, port: int) -> str:
    return f"listener.{protocol}.127_0_0_1_{port}"


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def kernel_udp_drops(pid: int, port: int) -> int:
    """What the kernel itself says it dropped on the daemon's UDP socket bound to ``port``."""
    inodes = socket_inodes(pid)
    for row in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = row.split()
        if int(fields[1].split(":")[1], 16) == port and fields[9] in inodes:
            return int(fields[12])
    raise AssertionError(f"no udp socket on port {port} in process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stop_process(daemon: DaemonProcess) -> None:
    os.killpg(daemon.proc.pid, signal.SIGSTOP)


def continue_process(daemon: DaemonProcess) -> None:
    os.killpg(daemon.proc.pid, signal.SIGCONT)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)
