"""Fixtures of the relay tests: loopback UDP/TCP backends that record what they get, relay
forwarders that are always closed, and a real Etsy statsd (npm package ``statsd``)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarders.base import ForwarderContext
from forwarders.statsd_relay import StatsdRelayForwarder

REPO = Path(__file__).resolve().parents[2]
NPM_PREFIX = REPO / "build" / "npm"
ETSY_STATSD = NPM_PREFIX / "node_modules" / "statsd" / "stats.js"
_JS_ENTRY = re.compile(r"(?:'((?:[^'\\]|\\.)*)'|([\w$]+))\s*:\s*(-?[0-9][0-9.eE+-]*)")


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


def backend_stat(backend: Any, stat: str) -> str:
    """The relay's stats key of one backend's ``stat`` (``backend.127_0_0_1_<port>_udp.x``)."""
    return f"backend.127_0_0_1_{backend.port}_{backend.protocol}.{stat}"


class UdpBackend:
    """A UDP socket on 127.0.0.1 whose datagrams a thread records."""

    protocol = "udp"

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}:udp"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65535))
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[bytes]:
        return [line for d in list(self.datagrams) for line in d.split(b"\n") if line]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class TcpBackend:
    """A TCP listener on 127.0.0.1 recording every complete line; ``stop`` closes it (and its
    connections) and ``restart`` listens again on the same port."""

    protocol = "tcp"

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.connections: list[bytearray] = []  # what each accepted connection delivered
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.restart()

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}:tcp"

    def restart(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop = threading.Event()
        thread = threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.05)
            self._conns.append(conn)
            received = bytearray()
            with self._lock:
                self.connections.append(received)
            reader = threading.Thread(target=self._read, args=(conn, received, stop),
                                      daemon=True)
            reader.start()
            self._threads.append(reader)
        listener.close()

    def _read(self, conn: socket.socket, received: bytearray, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data = conn.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self._lock:
                received += data
        conn.close()

    def lines(self) -> list[bytes]:
        """Every complete line, connection after connection (a connection's unterminated
        tail is not a line)."""
        with self._lock:
            chunks = [bytes(c[: c.rfind(b"\n") + 1]) for c in self.connections]
        return [line for chunk in chunks for line in chunk.split(b"\n") if line]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._threads = []
        for conn in self._conns:
            conn.close()
        self._conns = []

    close = stop


@pytest.fixture
def udp_backends() -> Iterator[Callable[[int], list[UdpBackend]]]:
    made: list[UdpBackend] = []

    def make(count: int) -> list[UdpBackend]:
        new = [UdpBackend() for _ in range(count)]
        made.extend(new)
        return new

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def tcp_backend() -> Iterator[Callable[[], TcpBackend]]:
    made: list[TcpBackend] = []

    def make() -> TcpBackend:
        backend = TcpBackend()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.stop()


@pytest.fixture
def make_relay() -> Iterator[Callable[..., StatsdRelayForwarder]]:
    """Build and start a relay forwarder from its config section; closed at teardown."""
    made: list[StatsdRelayForwarder] = []

    def make(config: dict[str, Any], start: bool = True) -> StatsdRelayForwarder:
        relay = StatsdRelayForwarder("relay", config, ForwarderContext())
        made.append(relay)
        if start:
            relay.start()
        return relay

    yield make
    for relay in made:
        relay.close(1.0)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ensure_etsy_statsd() -> Path:
    """The npm package ``statsd``, installed under build/npm when missing."""
    if not ETSY_STATSD.exists():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.skip("node/npm not installed: cannot run Etsy statsd")
        result = subprocess.run([npm, "install", "--no-save", "--prefix", str(NPM_PREFIX),
                                 "statsd"], capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not ETSY_STATSD.exists():
            pytest.skip(f"npm install statsd failed: {result.stderr[-500:]}")
    return ETSY_STATSD


class EtsyStatsd:
    """Etsy statsd on loopback with its management port. By default with a long flush
    interval and no backend, so that the tests read its counters (``counters`` command)
    before any flush clears them; ``settings`` (entries of its JavaScript config object)
    replace those two, e.g. to flush to a graphite backend."""

    def __init__(self, workdir: Path,
                 settings: str = "flushInterval: 600000, backends: []") -> None:
        stats_js = ensure_etsy_statsd()
        self.port = free_udp_port()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.mgmt_port = probe.getsockname()[1]
        config = workdir / f"etsy-{self.port}.js"
        config.write_text(
            f"{{ port: {self.port}, address: '127.0.0.1', mgmt_port: {self.mgmt_port},"
            f" mgmt_address: '127.0.0.1', {settings}, deleteIdleStats: true }}")
        self.proc = subprocess.Popen(["node", str(stats_js), str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=stats_js.parent, env={**os.environ})
        if not wait_until(self._mgmt_up, timeout=15):
            self.close()
            raise AssertionError("Etsy statsd did not open its management port")

    def _mgmt_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=0.2):
                return True
        except OSError:
            return False

    def command(self, text: str) -> str:
        with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=5) as conn:
            conn.sendall(text.encode() + b"\n")
            data = b""
            while not data.endswith(b"END\n\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode()

    def counters(self) -> dict[str, float]:
        """Etsy statsd's counters, without its own ``statsd.*`` ones (the ``counters``
        command prints a JavaScript object literal, not JSON)."""
        return self._numbers("counters")

    def gauges(self) -> dict[str, float]:
        return self._numbers("gauges")

    def _numbers(self, command: str) -> dict[str, float]:
        text = self.command(command)
        return {(quoted or bare): float(value)
                for quoted, bare, value in _JS_ENTRY.findall(text)
                if not (quoted or bare).startswith("statsd.")}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def etsy_statsd(tmp_path: Path) -> Iterator[Callable[[], EtsyStatsd]]:
    started: list[EtsyStatsd] = []

    def start() -> EtsyStatsd:
        server = EtsyStatsd(tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
