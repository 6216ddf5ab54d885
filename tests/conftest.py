"""Shared fixtures (free loopback ports, the real daemon as a subprocess) and the rules that
put each test in its tier, so `bash tools/test.sh --fast` can leave out the slow ones."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGING_TESTS = REPO / "tests" / "packaging"

# A test taking one of these starts a real process or broker, whether or not its module says
# so: a new test cannot slip into the fast loop by forgetting its marker.
REAL_PROCESS_FIXTURES = frozenset({"start_daemon", "kafka_bootstrap", "proxied_broker",
                                   "etsy_statsd"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PACKAGING_TESTS in item.path.parents:
            item.add_marker(pytest.mark.packaging)
        if REAL_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 at the time of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, other) as check:
            try:
                check.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


@pytest.fixture
def loopback_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (for a test starting its own server)."""
    return free_port()


class DaemonProcess:
    """``python -m pystatsd -c FILE`` in its own process group, with stdout and stderr
    collected by reader threads so a chatty daemon never blocks on a full pipe."""

    def __init__(self, config: dict[str, Any], workdir: Path,
                 pythonpath: tuple[str, ...] = ()) -> None:
        self.config_path = workdir / "pystatsd.conf"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = config.get("bind_port")
        self.state_dir = Path(config.get("state_dir", workdir / "state"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(REPO), *pythonpath)),
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pystatsd", "-c", str(self.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir,
            start_new_session=True,
        )
        self.stdout: list[bytes] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout, False)),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr, True)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: Any, sink: list[Any], text: bool) -> None:
        for line in iter(stream.readline, b""):
            sink.append(line.decode("utf-8", "replace") if text else line)
        stream.close()

    def wait_for_log(self, needle: str, timeout: float = 15.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.stderr):
                if needle in line:
                    return line
            if self.proc.poll() is not None and needle not in "".join(self.stderr):
                break
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not logged; stderr:\n{''.join(self.stderr)}")

    def wait_ready(self) -> None:
        self.wait_for_log("pystatsd started")

    def send_udp(self, *payloads: bytes, port: int | None = None) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for payload in payloads:
                sock.sendto(payload, ("127.0.0.1", port or self.port))

    def send_tcp(self, data: bytes, port: int | None = None) -> None:
        with socket.create_connection(("127.0.0.1", port or self.port), timeout=5) as sock:
            sock.sendall(data)

    def status(self) -> dict[str, Any]:
        """What ``pystatsd --status`` prints, asked on the admin socket from this process:
        polling through the CLI costs a Python start-up (0.5-1.5 s here) per look.
        tests/test_daemon.py runs the CLI itself."""
        from pystatsd.admin import SOCKET_NAME, ask

        return ask(self.state_dir / SOCKET_NAME)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait for exit, return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)

    def records(self) -> list[dict[str, Any]]:
        """Every JSON line the console forwarder printed."""
        return [orjson.loads(line) for line in self.stdout if line.startswith(b"{")]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Any]:
    """Start the real daemon with a config dict (bind_port filled in if absent); every daemon
    started is killed at teardown, whatever the test did."""
    started: list[DaemonProcess] = []

    def start(config: dict[str, Any], ready: bool = True,
              pythonpath: tuple[str, ...] = ()) -> DaemonProcess:
        config = {"bind_port": free_port(), "state_dir": str(tmp_path / "state"), **config}
        daemon = DaemonProcess(config, tmp_path, pythonpath)
        started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
