"""Failures while running never kill the daemon silently: a log target that goes away or cannot
be opened leaves logging in place, and a thread that dies of a bug stops the daemon cleanly,
final flush first, with a non-zero status for the service manager to restart it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

# Runs the real CLI with one injected fault: a thread of the daemon's process that raises once
# the trigger file appears (a stand-in for any bug on any thread).
INJECT_THREAD_FAULT = """
import sys, threading, time
from pathlib import Path
import pystatsd.daemon as daemon_module

trigger = Path(sys.argv.pop(1))
real_start = daemon_module.Daemon.start

def start(self):
    real_start(self)
    def doomed():
        while not trigger.exists():
            time.sleep(0.02)
        raise RuntimeError("injected fault")
    threading.Thread(target=doomed, name="doomed-thread", daemon=True).start()

daemon_module.Daemon.start = start
from pystatsd.cli import main
sys.exit(main())
"""


def write_config(tmp_path: Path, **extra: Any) -> tuple[Path, int]:
    port = free_port()
    config = {"bind_port": port, "state_dir": str(tmp_path / "state"), "flush_interval": 3600,
              "self_metrics": {"enabled": False}, **extra}
    path = tmp_path / "pystatsd.conf"
    path.write_text(yaml.safe_dump(config))
    return path, port


def launch(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)


def end(proc: subprocess.Popen[bytes]) -> None:
    """Whatever the test did: the daemon is gone and its pipes are closed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)


def wait_for_text(path: Path, needle: str, timeout: float = 15.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in {path}:\n{path.read_text() if path.exists() else ''}")


def send(port: int, payload: bytes) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)


def records(stdout: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]


def test_a_thread_that_dies_stops_the_daemon_cleanly_with_a_final_flush(tmp_path: Path) -> None:
    log = tmp_path / "pystatsd.log"
    config, port = write_config(tmp_path, logging={"target": str(log)})
    script = tmp_path / "inject.py"
    script.write_text(INJECT_THREAD_FAULT)
    trigger = tmp_path / "now"
    proc = launch([str(script), str(trigger), "-c", str(config)])
    try:
        wait_for_text(log, "pystatsd started")
        send(port, b"kept.before.crash:5|c\n")
        time.sleep(0.5)  # read by the TCP listener before the fault
        trigger.touch()
        out, _ = proc.communicate(timeout=30)
    finally:
        end(proc)
    assert proc.returncode == 1
    text = log.read_text()
    assert "thread doomed-thread died: injected fault" in text
    assert "Traceback" in text and "RuntimeError: injected fault" in text
    assert "stopping after a thread died" in text
    assert [(r["name"], r["stats"]["count"]) for r in records(out)] == [("kept.before.crash", 5.0)]


def test_sigusr1_after_the_log_directory_was_removed_keeps_running(tmp_path: Path) -> None:
    """Found by probing: the daemon exited 1 with no final flush, the interval lost."""
    logs = tmp_path / "logs"
    logs.mkdir()
    config, port = write_config(tmp_path, logging={"target": str(logs / "pystatsd.log")})
    proc = launch(["-m", "pystatsd", "-c", str(config)])
    try:
        wait_for_text(logs / "pystatsd.log", "pystatsd started")
        send(port, b"kept.across.usr1:2|c\n")
        shutil.rmtree(logs)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None, "the daemon died on SIGUSR1"
        send(port, b"kept.across.usr1:3|c\n")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        end(proc)
    assert proc.returncode == 0
    assert [(r["name"], r["stats"]["count"]) for r in records(out)] == [("kept.across.usr1", 5.0)]
    stderr = err.decode()
    assert f"cannot log to {logs / 'pystatsd.log'}" in stderr  # said where it could
    assert stderr.count("Traceback") == 0  # and no traceback per log line


def test_a_reload_naming_an_unopenable_log_target_keeps_logging_and_running(
        tmp_path: Path) -> None:
    log = tmp_path / "pystatsd.log"
    config, port = write_config(tmp_path, logging={"target": str(log)})
    proc = launch(["-m", "pystatsd", "-c", str(config)])
    try:
        wait_for_text(log, "pystatsd started")
        settings = yaml.safe_load(config.read_text())
        settings["logging"] = {"target": str(tmp_path / "no-such-dir" / "x.log")}
        config.write_text(yaml.safe_dump(settings))
        proc.send_signal(signal.SIGHUP)
        wait_for_text(log, "cannot log to")
        send(port, b"kept.across.hup:4|c\n")
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        end(proc)
    assert proc.returncode == 0
    assert [(r["name"], r["stats"]["count"]) for r in records(out)] == [("kept.across.hup", 4.0)]
    assert "stopped;" in log.read_text()  # the old log target still gets the daemon's lines
