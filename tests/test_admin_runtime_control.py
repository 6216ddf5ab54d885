"""Runtime control of the real daemon: a pid file for init systems other than systemd, JSON
logs, and admin ports that cannot bind stopping start-up with one clear line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_pid_file_holds_the_pid_while_running_and_refuses_a_second_daemon(
        start_daemon, tmp_path) -> None:
    pid_file = tmp_path / "pystatsd.pid"
    first = start_daemon({"pid_file": str(pid_file), "flush_interval": 3600})
    assert pid_file.read_text() == f"{first.proc.pid}\n"
    second = start_daemon({"pid_file": str(pid_file), "state_dir": str(tmp_path / "other")},
                          ready=False)
    assert second.proc.wait(15) == 1
    assert f"pid_file {pid_file}: pid {first.proc.pid} is running" in "".join(second.stderr)
    assert pid_file.read_text() == f"{first.proc.pid}\n"  # the refused one left it alone
    assert first.stop() == 0
    assert not pid_file.exists()


def test_a_pid_file_left_by_a_dead_process_is_replaced(start_daemon, tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file = tmp_path / "pystatsd.pid"
    pid_file.write_text(f"{dead.pid}\n")
    daemon = start_daemon({"pid_file": str(pid_file)})
    assert pid_file.read_text() == f"{daemon.proc.pid}\n"
    assert daemon.stop() == 0


def test_json_logs_are_one_object_per_line(start_daemon) -> None:
    daemon = start_daemon({"logging": {"format": "json"}})
    daemon.send_udp(b"not a metric")
    daemon.wait_for_log("rejected (bad_line)")
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.stderr]
    started = next(r for r in records if r["message"].startswith("pystatsd started"))
    assert started["level"] == "INFO" and started["logger"] == "pystatsd.daemon"
    assert "timestamp" in started
    assert any(r["level"] == "WARNING" and r["logger"] == "pystatsd.rejects" for r in records)


def test_an_admin_port_in_use_stops_start_up_with_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "pystatsd.conf"
        config.write_text("listeners: [{protocol: udp, port: 0}]\n"
                          f"state_dir: {tmp_path}/state\n"
                          f"admin: {{http: {{enabled: true, port: {port}}}}}\n")
        result = subprocess.run([sys.executable, "-m", "pystatsd", "-c", str(config)],
                                capture_output=True, text=True, timeout=30, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "admin interface cannot bind" in errors[0], result.stderr
    assert not (Path(tmp_path) / "state" / "console.sock").exists()


def test_a_state_dir_without_room_for_the_console_socket_is_no_reason_not_to_run(
        start_daemon, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    daemon = start_daemon({"state_dir": str(blocker / "state")})  # cannot be created
    daemon.wait_for_log("no console socket in")
    daemon.send_udp(b"still:1|c")
    assert daemon.stop() == 0
    assert "still" in {record["name"] for record in daemon.records()}
