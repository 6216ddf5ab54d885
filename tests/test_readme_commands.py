"""The README's first command, run as a user would: the main job on its embedded default
(pystatsd with a Kafka forwarder and an embedded broker) shows a sent metric arriving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_run_command_shows_metrics_arriving_in_kafka() -> None:
    for port, kind in ((5090, socket.SOCK_DGRAM), (5090, socket.SOCK_STREAM),
                       (9092, socket.SOCK_STREAM)):
        assert port_free(port, kind), f"port {port} is taken; the README's command needs it"
    proc = subprocess.Popen(["bash", "tools/run.sh"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, sink=sink: sink.extend(
        line.decode() for line in iter(s.readline, b""))) for s, sink in
        ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        end = time.monotonic() + 120  # the first run may still be installing .venv
        while time.monotonic() < end and not any("pystatsd started" in line for line in err):
            assert proc.poll() is None, "".join(err)
            time.sleep(0.1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"readme.check:1|c|@0.5|#env:stage", ("127.0.0.1", 5090))
        end = time.monotonic() + 30
        while time.monotonic() < end and not any('"readme.check"' in line for line in out):
            time.sleep(0.1)
        arrived = [line for line in out if '"readme.check"' in line]
        assert arrived, "".join(err[-20:])
        assert '"count":2.0' in arrived[0] and "key=readme.check,env=stage" in arrived[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for reader in readers:
            reader.join(5)
        for stream in (proc.stdout, proc.stderr):
            assert stream is not None
            stream.close()
    assert any("everything received was flushed and delivered" in line for line in err), err
