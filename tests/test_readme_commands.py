"""The README's first command, run as a user would: the main job on its embedded default
(pystatsd with a Kafka forwarder and an embedded broker) shows a sent metric arriving, never
uses a broker it did not start, and shows the daemon's final flush before it exits.

Each run gets free ports through PYSTATSD_DEMO_PORT and PYSTATSD_DEMO_BROKER_PORT, so parallel
runs (and a real broker on 9092) do not collide with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
FLUSH_INTERVAL = 5.0  # etc/embedded-kafka.conf


class RunScript:
    """``bash tools/run.sh`` in its own process group (as a terminal would run it), its
    stdout and stderr collected line by line."""

    def __init__(self, **env: str) -> None:
        self.proc = subprocess.Popen(["bash", "tools/run.sh"], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._collect, args=(stream, sink))
                         for stream, sink in ((self.proc.stdout, self.out),
                                              (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: IO[bytes], sink: list[str]) -> None:
        for line in iter(stream.readline, b""):
            sink.append(line.decode("utf-8", "replace"))

    def wait_for(self, lines: list[str], needle: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = [line for line in list(lines) if needle in line]
            if found:
                return found[0]
            assert self.proc.poll() is None, "".join(self.err[-20:])
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not shown; stderr:\n{''.join(self.err[-20:])}")

    def close(self) -> None:
        # TERM first: the daemon runs in a session of its own, which only the script's own
        # stop reaches; a KILL of the script's group would leave it running.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            stream.close()


@pytest.fixture
def run_script() -> Iterator[list[RunScript]]:
    started: list[RunScript] = []
    yield started
    for script in started:
        script.close()


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def send(port: int, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, ("127.0.0.1", port))


def record_of(line: str) -> dict[str, Any]:
    """The JSON value of one line the tail printed (``p3 @1 key=... {...}``)."""
    record: dict[str, Any] = orjson.loads(line.split(" ", 3)[3])
    return record


def test_run_command_uses_its_own_broker_when_the_port_is_taken(
        loopback_port: int, run_script: list[RunScript]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        # Somebody else's service on the demo's broker port: it accepts and never answers.
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(8)
        taken = squatter.getsockname()[1]
        script = RunScript(PYSTATSD_DEMO_PORT=str(loopback_port),
                           PYSTATSD_DEMO_BROKER_PORT=str(taken))
        run_script.append(script)
        # The first run may still be installing .venv.
        moved = script.wait_for(script.err, f"127.0.0.1:{taken} is taken", timeout=120)
        own = moved.rstrip().rsplit("127.0.0.1:", 1)[1].split()[0]
        assert own != str(taken)
        started = script.wait_for(script.err, "started an embedded memory-only Tansu broker",
                                  timeout=30)
        assert f"listening on 127.0.0.1:{own}" in started
        script.wait_for(script.err, "pystatsd started", timeout=30)
        send(loopback_port, b"readme.check:1|c|@0.5|#env:stage")
        arrived = script.wait_for(script.out, '"readme.check"', timeout=30)
        assert '"count":2.0' in arrived and "key=readme.check,env=stage" in arrived
        script.proc.send_signal(signal.SIGTERM)
        assert script.proc.wait(30) == 0
    assert any("everything received was flushed and delivered" in line for line in script.err)


def test_ctrl_c_shows_the_final_flush_and_folds_self_metrics(
        loopback_port: int, run_script: list[RunScript]) -> None:
    script = RunScript(PYSTATSD_DEMO_PORT=str(loopback_port),
                       PYSTATSD_DEMO_BROKER_PORT=str(free_tcp_port()))
    run_script.append(script)
    script.wait_for(script.err, "pystatsd started", timeout=120)
    script.wait_for(script.out, "pystatsd.", timeout=30)  # a first flush went by
    # Send early in an interval, then Ctrl-C: only the final flush can carry the metric.
    while not 0.3 < time.time() % FLUSH_INTERVAL < 1.0:
        time.sleep(0.05)
    send(loopback_port, b"readme.last:1|c")
    os.killpg(script.proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert script.proc.wait(30) == 0
    shown = [line for line in script.out if '"readme.last"' in line]
    assert shown, "".join(script.out[-10:]) + "".join(script.err[-10:])
    interval = record_of(shown[0])["interval"]
    assert isinstance(interval, float) and interval < FLUSH_INTERVAL - 1.0  # the cut-short one
    # The daemon's own series are folded into one line per flush, not shown one by one.
    assert not [line for line in script.out if " key=pystatsd." in line]
    assert any(line.startswith("-- pystatsd.* self-metrics") and "received.datagrams=1" in line
               for line in script.out), "".join(script.out)
