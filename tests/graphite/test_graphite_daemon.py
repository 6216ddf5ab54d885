"""The real daemon with graphite, graphite pickle and statsite listeners: each format is
decoded and aggregated, relayed only to the relays that take it (graphite lines with their
timestamps to carbon_routes, statsite commands whole to statsite_proxy), and statsd traffic
beside it is untouched."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import FakeCarbon, wait_for
from statsite_wire import COUNTER, frame
from test_statsite_proxy import StatsiteSink

from pystatsd.sample import Sample
from tests.conftest import free_port

pytestmark = pytest.mark.integration


class _Hostile:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def pickle_frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=2)
    return struct.pack(">I", len(body)) + body


def test_each_listener_format_is_decoded_aggregated_and_relayed_to_its_kind(
        start_daemon: Any, tmp_path: Path) -> None:
    graphite_port, pickle_port, statsite_port = free_port(), free_port(), free_port()
    carbon, statsite = FakeCarbon(), StatsiteSink()
    try:
        daemon = start_daemon({
            "flush_interval": 1,
            "listeners": [
                {"protocol": "udp"}, {"protocol": "tcp"},
                {"protocol": "udp", "port": graphite_port, "format": "graphite"},
                {"protocol": "tcp", "port": graphite_port, "format": "graphite"},
                {"protocol": "tcp", "port": pickle_port, "format": "graphite_pickle"},
                {"protocol": "tcp", "port": statsite_port, "format": "statsite"},
                {"protocol": "udp", "port": statsite_port, "format": "statsite"}],
            "forwarders": {
                "console": {},
                "routes": {"type": "carbon_routes", "routes": [
                    {"key": "all", "type": "send_all_match",
                     "destinations": [{"address": f"127.0.0.1:{carbon.port}"}]}]},
                "proxy": {"type": "statsite_proxy", "servers": [
                    {"address": f"127.0.0.1:{statsite.port}", "weight": 1}]}}})
        target = tmp_path / "pwned"
        # Stamped now: a graphite datapoint's timestamp is honoured, and one outside
        # timestamp_window_seconds would be refused (docs/input-formats.md).
        t = int(time.time()) - 1
        daemon.send_udp(b"g.udp 1.5 %d\ng.udp2;dc=eu 2 %d\n" % (t, t + 1),
                        port=graphite_port)
        daemon.send_tcp(b"g.tcp 3 %d\nnot a graphite line at all\n" % (t + 2), port=graphite_port)
        daemon.send_tcp(pickle_frame([("g.pickle", (t + 3, 4.0))])
                        + pickle_frame([_Hostile(target)])
                        + pickle_frame([("g.after_hostile;k=v", (t + 4, 5))]),
                        port=pickle_port)
        daemon.send_tcp(b"s.ascii:1|c\n" + frame(COUNTER, "s.binary", 2) + b"s.kv:7|kv\n",
                        port=statsite_port)
        daemon.send_udp(frame(COUNTER, "s.udp", 3), port=statsite_port)
        daemon.send_udp(b"plain.statsd:1|c")
        wait_for(lambda: len(carbon.snapshot()) >= 5, what="graphite lines relayed")
        wait_for(lambda: len(statsite.samples) >= 4, what="statsite commands relayed")
        time.sleep(0.3)
        assert sorted(carbon.snapshot()) == [
            ("g.after_hostile;k=v", 5.0, t + 4.0), ("g.pickle", 4.0, t + 3.0),
            ("g.tcp", 3.0, t + 2.0), ("g.udp", 1.5, t + 0.0), ("g.udp2;dc=eu", 2.0, t + 1.0)]
        assert sorted(statsite.samples) == sorted([
            Sample("s.ascii", "counter", 1.0), Sample("s.binary", "counter", 2.0),
            Sample("s.kv", "gauge", 7.0), Sample("s.udp", "counter", 3.0)])

        def aggregated() -> dict[tuple[str, str], dict[str, Any]]:
            return {(r["name"], r["type"]): r for r in daemon.records()}

        wanted = {("g.udp", "gauge"), ("g.udp2", "gauge"), ("g.tcp", "gauge"),
                  ("g.pickle", "gauge"), ("g.after_hostile", "gauge"), ("s.ascii", "counter"),
                  ("s.binary", "counter"), ("s.kv", "gauge"), ("s.udp", "counter"),
                  ("plain.statsd", "counter")}
        wait_for(lambda: wanted <= set(aggregated()), what="every format aggregated")
        records = aggregated()
        assert records[("g.udp2", "gauge")]["tags"] == {"dc": "eu"}
        assert records[("g.pickle", "gauge")]["stats"]["value"] == 4.0
        assert records[("s.binary", "counter")]["stats"]["count"] == 2.0
        assert not target.exists()
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        carbon.close()
        statsite.close()


def test_a_pickle_listener_on_udp_is_refused_at_start_up(start_daemon: Any) -> None:
    daemon = start_daemon({"listeners": [{"protocol": "udp", "format": "graphite_pickle"}]},
                          ready=False)
    assert daemon.proc.wait(20) != 0
    assert "graphite_pickle is tcp only" in "".join(daemon.stderr)


def test_an_oversized_pickle_frame_closes_only_its_connection(start_daemon: Any) -> None:
    port = free_port()
    carbon = FakeCarbon()
    try:
        daemon = start_daemon({"listeners": [
            {"protocol": "tcp", "port": port, "format": "graphite_pickle"}],
            "forwarders": {"routes": {"type": "carbon_routes", "routes": [
                {"key": "all", "type": "send_all_match",
                 "destinations": [{"address": f"127.0.0.1:{carbon.port}"}]}]}}})
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(struct.pack(">I", 50 << 20) + b"x" * 1000)
            sock.settimeout(5)
            assert sock.recv(10) == b""  # the daemon hung up on it
        daemon.send_tcp(pickle_frame([("still.fine", (1700000000, 1))]), port=port)
        wait_for(lambda: carbon.snapshot() == [("still.fine", 1.0, 1700000000.0)],
                 what="the next connection's datapoint")
    finally:
        carbon.close()
