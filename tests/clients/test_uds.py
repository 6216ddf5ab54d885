"""Unix domain socket ingest: the clients' UDS modes (``datadog`` ``socket_path``, datagram
and stream; ``hot-shots`` ``protocol: 'uds'``) unmodified against the real daemon, the socket
file's mode, a stale socket file replaced at start, a live one refused."""

from __future__ import annotations

import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import by_series

pytestmark = pytest.mark.integration


def start(start_daemon: Any, tmp_path: Path, **listener: Any) -> tuple[Any, str, str]:
    gram, stream = str(tmp_path / "dsd.sock"), str(tmp_path / "dsd-stream.sock")
    daemon = start_daemon({"flush_interval": 3600, "listeners": [
        {"protocol": "unixgram", "path": gram, **listener},
        {"protocol": "unix", "path": stream, **listener}]})
    return daemon, gram, stream


def flushed(daemon: Any) -> dict[tuple[str, str, tuple[Any, ...]], Any]:
    time.sleep(0.5)  # the stream connection's last frames are read before SIGTERM
    assert daemon.stop() == 0, "".join(daemon.stderr)
    return by_series(daemon.records())


def test_the_datadog_client_over_unix_datagram_and_stream(start_daemon: Any,
                                                          tmp_path: Path) -> None:
    from datadog.dogstatsd import DogStatsd

    daemon, gram, stream = start(start_daemon, tmp_path, socket_mode="0660")
    assert stat.S_IMODE(os.stat(gram).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(stream).st_mode)
    for path, prefix in ((gram, "gram"), ("unixstream://" + stream, "stream")):
        client = DogStatsd(socket_path=path, disable_telemetry=True,
                           origin_detection_enabled=False)
        client.increment(f"{prefix}.hits", 3, tags=["env:prod"])
        client.gauge(f"{prefix}.temp", 3)
        client.gauge(f"{prefix}.temp", -5)  # a unix listener is absolute by default
        client.histogram(f"{prefix}.size", 10)
        client.histogram(f"{prefix}.size", 20)
        client.distribution(f"{prefix}.latency", 4)
        client.timing(f"{prefix}.query", 6)
        client.set(f"{prefix}.users", "alice")
        client.event("deploy", "v1.2 is out", alert_type="success", tags=["env:prod"])
        client.service_check(f"{prefix}.up", 1, message="slow")
        client.flush()
        client.close_socket()
    series = flushed(daemon)
    for prefix in ("gram", "stream"):
        assert series[(f"{prefix}.hits", "counter", (("env", "prod"),))]["count"] == 3
        assert series[(f"{prefix}.temp", "gauge", ())]["value"] == -5
        size = series[(f"{prefix}.size", "histogram", ())]
        assert (size["count"], size["sum"]) == (2, 30)
        assert series[(f"{prefix}.latency", "histogram", ())]["sum"] == 4
        assert series[(f"{prefix}.query", "timer", ())]["sum"] == 6
        assert series[(f"{prefix}.users", "set", ())]["count"] == 1
    records = daemon.records()
    checks = sorted((r["title"], r["status"], r["text"]) for r in records
                    if r.get("kind") == "service_check")
    assert checks == [("gram.up", 1, "slow"), ("stream.up", 1, "slow")]
    deploys = [r for r in records if r.get("kind") == "event"]
    assert [(r["title"], r["text"], r["alert_type"]) for r in deploys] == [
        ("deploy", "v1.2 is out", "success")] * 2
    assert not os.path.exists(gram) and not os.path.exists(stream)  # removed at stop


def test_hot_shots_over_uds(start_daemon: Any, tmp_path: Path, run_node: Any) -> None:
    daemon, gram, _ = start(start_daemon, tmp_path)
    run_node(f"""
const StatsD = require('hot-shots');
const c = new StatsD({{protocol: 'uds', path: {gram!r},
                      errorHandler: (e) => {{ console.error(e); process.exit(1); }}}});
c.increment('hs.hits', 2, {{env: 'prod'}});
c.gauge('hs.temp', -7);
c.timing('hs.query', 11);
c.histogram('hs.size', 3);
c.set('hs.users', 'bob');
setTimeout(() => c.close((err) => process.exit(err ? 1 : 0)), 200);
""")
    series = flushed(daemon)
    assert series[("hs.hits", "counter", (("env", "prod"),))]["count"] == 2
    assert series[("hs.temp", "gauge", ())]["value"] == -7
    assert series[("hs.query", "timer", ())]["sum"] == 11
    assert series[("hs.size", "histogram", ())]["sum"] == 3
    assert series[("hs.users", "set", ())]["count"] == 1


def test_stream_frames_split_anywhere_are_reassembled(start_daemon: Any,
                                                      tmp_path: Path) -> None:
    daemon, _, stream = start(start_daemon, tmp_path)
    frames = b"".join(struct.pack("<I", len(p)) + p
                      for p in (b"a:1|c\na:2|c", b"b:5|g", b"a:4|c"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(stream)
        for offset in range(0, len(frames), 3):  # lengths and payloads cut mid-way
            client.sendall(frames[offset:offset + 3])
            time.sleep(0.005)
    series = flushed(daemon)
    assert series[("a", "counter", ())]["count"] == 7
    assert series[("b", "gauge", ())]["value"] == 5


def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(start_daemon: Any,
                                                                tmp_path: Path) -> None:
    gram = str(tmp_path / "dsd.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(gram)
    stale.close()  # the file stays, as after a daemon killed with SIGKILL
    daemon = start_daemon({"flush_interval": 3600,
                           "listeners": [{"protocol": "unixgram", "path": gram}]})
    assert "removed the stale socket file" in "".join(daemon.stderr)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"up:1|c", gram)
    second = start_daemon({"flush_interval": 3600, "state_dir": str(tmp_path / "second"),
                           "listeners": [{"protocol": "unixgram", "path": gram}]},
                          ready=False)
    assert second.proc.wait(20) == 1
    assert f"unixgram listener {gram}: another process is listening on it" in "".join(
        second.stderr)
    assert flushed(daemon)[("up", "counter", ())]["count"] == 1


def test_a_file_that_is_not_a_socket_stops_the_start(start_daemon: Any,
                                                     tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    daemon = start_daemon({"listeners": [{"protocol": "unix", "path": str(path)}]},
                          ready=False)
    assert daemon.proc.wait(20) == 1
    assert "exists and is not a socket" in "".join(daemon.stderr)
    assert path.read_text() == "keep me"
