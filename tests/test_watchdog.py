"""systemd's watchdog: the real daemon, under a test notify socket with WATCHDOG_USEC set,
pings while it makes progress, and stops when a receive thread hangs.

The hang is injected from here, not by a production switch: a ``sitecustomize`` on the
daemon's PYTHONPATH wraps each listener's delivery so that a payload starting with
``test.hang`` blocks the receive thread for good."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

HANG_HOOK = '''\
import threading

from pystatsd import listeners


def _wrap(cls):
    original = cls.__init__

    def hanging_init(self, spec, deliver, *rest, **keywords):
        def deliver_or_hang(payload):
            if payload.startswith(b"test.hang"):
                threading.Event().wait()  # this receive thread is wedged from here on
            deliver(payload)

        batch = keywords.get("deliver_batch")
        if batch is not None:  # the native UDP receive's batches
            def batch_or_hang(payloads, *more, **options):
                if any(payload.startswith(b"test.hang") for payload in payloads):
                    threading.Event().wait()
                batch(payloads, *more, **options)

            keywords["deliver_batch"] = batch_or_hang
        original(self, spec, deliver_or_hang, *rest, **keywords)

    cls.__init__ = hanging_init


_wrap(listeners.UdpListener)
_wrap(listeners.TcpListener)
'''


class NotifySocket:
    """What systemd listens on: a Unix datagram socket; collects every message."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[str]:
        """The messages that arrive during the next ``seconds``."""
        end = time.monotonic() + seconds
        got = []
        while time.monotonic() < end:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), message))
            got.append(message)
        return got

    def count_until(self, message: str, count: int, timeout: float) -> int:
        """How many ``message`` arrive, collecting until ``count`` of them did or ``timeout``
        seconds went by (so a healthy daemon does not make the test wait the whole window)."""
        end = time.monotonic() + timeout
        seen = 0
        while seen < count and time.monotonic() < end:
            try:
                got = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), got))
            seen += got == message
        return seen

    def drain(self) -> list[str]:
        """Take what is already queued on the socket."""
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(0.1)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    path = tmp_path / "notify.sock"
    listener = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_pings_while_idle_and_stop_when_a_receive_thread_hangs(
        start_daemon, notify_socket, tmp_path, protocol) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_HOOK)
    daemon = start_daemon({"flush_interval": 3600}, pythonpath=(str(hook),))
    assert "READY=1" in notify_socket.collect(0.5)
    # Idle (no traffic, no flush due for an hour): every part still answers.
    pings = notify_socket.count_until("WATCHDOG=1", 3, timeout=3.0)
    assert pings >= 3, notify_socket.messages  # one each 0.5 s: 6 in 3 s, less on a busy machine
    daemon.send_udp(b"normal:1|c")
    daemon.send_tcp(b"normal:1|c\n")
    assert notify_socket.count_until("WATCHDOG=1", 2, timeout=1.5) >= 2

    if protocol == "udp":
        daemon.send_udp(b"test.hang:1|c")
    else:
        daemon.send_tcp(b"test.hang:1|c\n")
    line = daemon.wait_for_log("watchdog pings stopped", timeout=5)
    assert f"{protocol} listener 127.0.0.1:" in line
    notify_socket.drain()  # pings sent before the verdict, queued while we waited for it
    # Four ping periods (0.5 s each) without one: long enough to see pings that went on.
    assert notify_socket.collect(2.0).count("WATCHDOG=1") == 0
    log = "".join(daemon.stderr)
    assert "makes progress again" not in log
    # Only the wedged part is blamed: the other listener and the main loop still answer.
    other = "tcp" if protocol == "udp" else "udp"
    assert f"{other} listener" not in log and "main loop" not in log
    daemon.kill()  # what systemd does next (SIGABRT, then Restart=on-failure)


def test_without_watchdog_usec_nothing_is_pinged(start_daemon, notify_socket,
                                                 monkeypatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC")
    daemon = start_daemon({"flush_interval": 3600})
    messages = notify_socket.collect(1.5)  # READY=1, then three ping periods (0.5 s) with none
    assert "READY=1" in messages and "WATCHDOG=1" not in messages
    assert daemon.stop() == 0


def test_a_watchdog_meant_for_another_pid_is_not_ours(start_daemon, notify_socket,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))  # the test's pid, not the daemon's
    daemon = start_daemon({"flush_interval": 3600})
    assert "WATCHDOG=1" not in notify_socket.collect(1.5)  # three ping periods (0.5 s)
    assert daemon.stop() == 0
