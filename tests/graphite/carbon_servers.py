"""Real carbon-cache processes (Debian's graphite-carbon) on loopback ports with their config
and whisper files in a temporary directory, read back with the whisper tools; a fake carbon
(a TCP socket that records what it is sent) for tests that need to count or cut; and a
stream of graphite lines over TCP, for tests that change things while lines flow."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pystatsd.decoders.graphite_pickle import parse_pickle_frame

CARBON_CACHE = shutil.which("carbon-cache")
WHISPER_FETCH = shutil.which("whisper-fetch")
# whisper-fetch's own interpreter (its #! line), which has the whisper library it uses.
WHISPER_PYTHON = (Path(WHISPER_FETCH).read_text().splitlines()[0][2:].strip()
                  if WHISPER_FETCH else "")
# What whisper-fetch --json --from=FROM does, for each {path: file} read from stdin.
_FETCH_ALL = """
import json, sys, whisper
since = int(sys.argv[1])
out = {}
for path, file in json.load(sys.stdin).items():
    (start, _end, step), values = whisper.fetch(file, since)
    out[path] = (start, step, values)
print(json.dumps(out))
"""
needs_carbon = pytest.mark.skipif(CARBON_CACHE is None or WHISPER_FETCH is None,
                                  reason="graphite-carbon / python3-whisper not installed "
                                         "(apt-get install graphite-carbon)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


class CarbonCache:
    """One carbon-cache in ``directory``, storing every path at 10-second resolution."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.whisper = directory / "storage" / "whisper"
        self.line_port = free_port()
        self.pickle_port = free_port()
        self.query_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> CarbonCache:
        (self.directory / "log").mkdir(parents=True, exist_ok=True)
        self.whisper.mkdir(parents=True, exist_ok=True)
        (self.directory / "storage-schemas.conf").write_text(
            "[all]\npattern = .*\nretentions = 10s:1d\n")
        (self.directory / "carbon.conf").write_text(f"""[cache]
STORAGE_DIR = {self.directory}/storage/
LOCAL_DATA_DIR = {self.whisper}/
WHITELISTS_DIR = {self.directory}/storage/lists/
CONF_DIR = {self.directory}/
LOG_DIR = {self.directory}/log/
PID_DIR = {self.directory}/
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {self.line_port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {self.pickle_port}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {self.query_port}
ENABLE_TAGS = False
""")
        assert CARBON_CACHE is not None
        with open(self.directory / "carbon.out", "wb") as out:
            self._process = subprocess.Popen(
                [CARBON_CACHE, f"--config={self.directory}/carbon.conf", "--debug",
                 f"--pidfile={self.directory}/carbon.pid", "start"],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: _listening(self.line_port) and _listening(self.pickle_port), 30,
                 f"carbon-cache on {self.line_port}/{self.pickle_port}")
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> CarbonCache:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return (self.directory / "carbon.out").read_text(errors="replace")

    def file_of(self, path: str) -> Path:
        """The whisper file carbon keeps ``path`` in (tagged paths by carbon's own encoder)."""
        if ";" in path:
            encoded = subprocess.run(
                ["/usr/bin/python3", "-c", "import sys; from carbon.util import TaggedSeries; "
                 "print(TaggedSeries.encode(sys.argv[1], '/', hash_only=True))", path],
                check=True, capture_output=True, text=True).stdout.strip()
            return self.whisper / (encoded + ".wsp")
        return self.whisper / (path.replace(".", "/") + ".wsp")

    def values(self, path: str, since: int) -> dict[int, float]:
        """The non-null (timestamp, value) points of ``path`` from ``since``."""
        return self.values_of([path], since)[path]

    def values_of(self, paths: list[str], since: int) -> dict[str, dict[int, float]]:
        """:meth:`values` of each path, read in one process by the whisper library that
        whisper-fetch runs (one whisper-fetch per path costs ~0.15 s of start-up each)."""
        files = {path: self.file_of(path) for path in paths}
        found = {path: str(file) for path, file in files.items() if file.exists()}
        out: dict[str, dict[int, float]] = {path: {} for path in paths}
        if not found:
            return out
        assert WHISPER_FETCH is not None
        fetched = json.loads(subprocess.run(
            [WHISPER_PYTHON, "-c", _FETCH_ALL, str(since - 1)], input=json.dumps(found),
            check=True, capture_output=True, text=True).stdout)
        for path, (start, step, values) in fetched.items():
            out[path] = {start + i * step: v for i, v in enumerate(values) if v is not None}
        return out

    def paths(self) -> set[str]:
        """Every untagged path that has a whisper file."""
        return {str(p.relative_to(self.whisper).with_suffix("")).replace("/", ".")
                for p in self.whisper.rglob("*.wsp") if "_tagged" not in p.parts}


class TcpSink:
    """A TCP server on 127.0.0.1 that hands each connection's bytes, as they come, to
    :meth:`_take`, which keeps what it can read and returns the incomplete rest; it counts
    the connections it accepted. ``port`` 0: any free one."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer = self._take(buffer + chunk)

    def _take(self, buffer: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


class FakeCarbon(TcpSink):
    """A TCP server that records each datapoint sent to it, plaintext or pickle."""

    def __init__(self, protocol: str = "plaintext", port: int = 0) -> None:
        self.protocol = protocol
        self.points: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        super().__init__(port)

    def _take(self, buffer: bytes) -> bytes:
        points: list[tuple[str, float, float]] = []
        if self.protocol == "plaintext":
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                path, value, stamp = line.decode().split(" ")
                points.append((path, float(value), float(stamp)))
        else:
            while len(buffer) >= 4:
                (length,) = struct.unpack(">I", buffer[:4])
                if len(buffer) < 4 + length:
                    break
                # read with the listener's data-only unpickler: what we send must pass it
                samples, errors = parse_pickle_frame(buffer[4:4 + length])
                assert not errors, errors
                for sample in samples:
                    path = sample.name + "".join(f";{k}={v}" for k, v in sample.tags)
                    assert isinstance(sample.value, float) and sample.timestamp is not None
                    points.append((path, sample.value, sample.timestamp))
                buffer = buffer[4 + length:]
        with self._lock:
            self.points.extend(points)
        return buffer

    def snapshot(self) -> list[tuple[str, float, float]]:
        with self._lock:
            return list(self.points)


class GraphiteStream:
    """Graphite lines ``<prefix>.n<i>`` over one TCP connection, ten every few milliseconds,
    while running (from the start unless ``paused``); TCP: nothing the daemon is sent is lost
    on the way. ``sent`` says how many lines went."""

    def __init__(self, port: int, prefix: str = "stream", paused: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.prefix = prefix.encode()
        self.sent = 0
        self.running = threading.Event()
        if not paused:
            self.running.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.running.wait(0.05):
                continue
            stamp = int(time.time())
            self.sock.sendall(b"".join(b"%s.n%d 1 %d\n" % (self.prefix, self.sent + i, stamp)
                                       for i in range(10)))
            self.sent += 10
            time.sleep(0.003)

    def until(self, lines: int) -> None:
        """Wait while ``lines`` more lines go."""
        start = self.sent
        wait_for(lambda: self.sent >= start + lines, what=f"{lines} more lines sent")

    def run_for(self, lines: int) -> None:
        """Run (again) while ``lines`` more lines go."""
        self.running.set()
        self.until(lines)

    def pause(self) -> int:
        self.running.clear()
        time.sleep(0.1)  # a send in progress ends
        return self.sent

    def stop(self) -> int:
        self.pause()
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.sent
