"""The real daemon with graphite listeners that each choose what a datapoint means: relayed
only (into a real carbon-cache, the client's timestamps kept, nothing aggregated), aggregated
only (nothing relayed), or both, by rules that make a path a counter, a timer, a set, a new
name or nothing; each counted per listener."""

from __future__ import annotations

import pickle
import signal
import struct
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from carbon_servers import CarbonCache, FakeCarbon, needs_carbon, wait_for

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def pickle_frame(points: list[tuple[str, tuple[float, float]]]) -> bytes:
    body = pickle.dumps(points, protocol=2)
    return struct.pack(">I", len(body)) + body


def routes_to(port: int) -> dict[str, Any]:
    return {"type": "carbon_routes", "routes": [
        {"key": "all", "type": "send_all_match",
         "destinations": [{"address": f"127.0.0.1:{port}"}]}]}


def graphite_listener(protocol: str, port: int, **keys: Any) -> dict[str, Any]:
    return {"protocol": protocol, "address": "127.0.0.1", "port": port, "format": "graphite",
            **keys}


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def counted(path: Path, name: str) -> float:
    """A self-metric counter's total over every flush so far."""
    return sum(r["stats"]["count"] for r in records(path) if r.get("name") == "pystatsd." + name)


def series(path: Path, prefix: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["name"], r["type"]): r for r in records(path)
            if "type" in r and r["name"].startswith(prefix)}


def start_of_an_interval(interval: float) -> int:
    """Wait until an interval has just begun, so what is sent next lands in it; return the
    whole second it began."""
    while time.time() % interval > 0.3 * interval:
        time.sleep(0.02)
    return int(time.time())


@needs_carbon
def test_relay_only_lands_in_carbon_with_the_client_timestamps_and_aggregates_nothing(
        start_daemon: Any, tmp_path: Path) -> None:
    tcp_port, udp_port, pickle_port = free_port(), free_port(), free_port()
    out = tmp_path / "metrics.jsonl"
    relay_only = {"graphite_datapoints": ["relay"]}
    with CarbonCache(tmp_path / "carbon") as carbon:
        daemon = start_daemon({
            "flush_interval": 1,
            "listeners": [
                graphite_listener("tcp", tcp_port, **relay_only),
                graphite_listener("udp", udp_port, **relay_only),
                {**graphite_listener("tcp", pickle_port, **relay_only),
                 "format": "graphite_pickle"}],
            "forwarders": {"routes": routes_to(carbon.line_port),
                           "file": {"path": str(out)}}})
        # Two hours old: outside timestamp_window_seconds, which an aggregating listener would
        # refuse; a relay passes every timestamp on. Aligned to whisper's 10 s slots.
        old = int(time.time()) // 10 * 10 - 7200
        daemon.send_tcp(b"relay.tcp 1.5 %d\nrelay.tcp 2.5 %d\n" % (old, old + 10),
                        port=tcp_port)
        daemon.send_udp(b"relay.udp -4 %d\n" % (old + 20), port=udp_port)
        daemon.send_tcp(pickle_frame([("relay.pickle", (old + 30, 8.0)),
                                      ("relay.pickle", (old + 40, 9.25))]), port=pickle_port)
        expected = {"relay.tcp": {old: 1.5, old + 10: 2.5}, "relay.udp": {old + 20: -4.0},
                    "relay.pickle": {old + 30: 8.0, old + 40: 9.25}}
        wait_for(lambda: carbon.values_of(list(expected), old) == expected, 30,
                 "every datapoint in whisper at its client timestamp")
        prefix = "listener.tcp.127_0_0_1_"
        wait_for(lambda: (counted(out, f"{prefix}{tcp_port}.datapoints.relayed"),
                          counted(out, f"listener.udp.127_0_0_1_{udp_port}.datapoints.relayed"),
                          counted(out, f"{prefix}{pickle_port}.datapoints.relayed"))
                 == (2, 1, 2), what="the relayed datapoints counted per listener")
        assert daemon.stop() == 0
    assert series(out, "relay.") == {}  # nothing was aggregated
    assert not [r for r in records(out) if r.get("name", "").endswith(
        (".datapoints.aggregated", "rejected.timestamp_out_of_window"))]


def test_aggregate_only_relays_nothing_and_honours_the_client_timestamp(
        start_daemon: Any, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "metrics.jsonl"
    carbon = FakeCarbon()
    try:
        daemon = start_daemon({
            "flush_interval": 2,
            "listeners": [{"protocol": "udp"},
                          graphite_listener("tcp", port, graphite_datapoints=["aggregate"])],
            "forwarders": {"routes": routes_to(carbon.port), "file": {"path": str(out)}}})
        now = start_of_an_interval(2)
        # in the interval: aggregated in it; 60 s old: its own stamped point (late_samples:
        # pass), as a statsd |T sample; two hours old: refused as out of the window
        daemon.send_tcp(b"agg.now 3 %d\nagg.now 4 %d\nagg.late 5 %d\nagg.ancient 6 %d\n"
                        % (now, now, now - 60, now - 7200), port=port)
        daemon.send_udp(b"beside:1|c")  # a statsd line: still taken, and not a graphite one
        wait_for(lambda: {("agg.now", "gauge"), ("agg.late", "gauge")}
                 <= set(series(out, "agg.")), what="the datapoints aggregated")
        got = series(out, "agg.")
        assert got[("agg.now", "gauge")]["stats"]["value"] == 4.0
        assert "timestamp" not in got[("agg.now", "gauge")]
        assert got[("agg.late", "gauge")]["timestamp"] == now - 60
        assert ("agg.ancient", "gauge") not in got
        wait_for(lambda: counted(out, f"listener.tcp.127_0_0_1_{port}.datapoints.aggregated")
                 == 3 and counted(out, "rejected.timestamp_out_of_window") == 1,
                 what="three aggregated, one refused for its timestamp")
        time.sleep(0.5)
        assert carbon.snapshot() == []  # a carbon_routes forwarder is there, and got nothing
        assert counted(out, f"listener.tcp.127_0_0_1_{port}.datapoints.relayed") == 0
        assert daemon.stop() == 0
    finally:
        carbon.close()


RULES = [
    {"regex": r"^app\.(\w+)\.requests$", "type": "counter", "name": "requests.$1"},
    {"prefix": "app.", "sub": ".latency", "type": "timer"},
    {"prefix": "app.users", "type": "set"},
    {"prefix": "debug.", "drop": True},
]


def test_rules_make_datapoints_counters_timers_sets_or_nothing_and_relaying_keeps_them_all(
        start_daemon: Any, tmp_path: Path) -> None:
    tcp_port, pickle_port = free_port(), free_port()
    out = tmp_path / "metrics.jsonl"
    carbon = FakeCarbon()
    both = {"graphite_datapoints": ["relay", "aggregate"], "graphite_rules": "app"}
    try:
        daemon = start_daemon({
            "flush_interval": 2,
            "listeners": [graphite_listener("tcp", tcp_port, **both),
                          {**graphite_listener("tcp", pickle_port, **both),
                           "format": "graphite_pickle"}],
            "graphite_rules": {"app": RULES},
            "forwarders": {"routes": routes_to(carbon.port), "file": {"path": str(out)}}})
        now = start_of_an_interval(2)
        lines = [b"app.web.requests 3 %d" % now, b"app.web.requests 4 %d" % now,
                 b"app.db.latency 10 %d" % now, b"app.users 42 %d" % now,
                 b"app.users 42 %d" % now, b"app.users 7 %d" % now,
                 b"debug.noise 1 %d" % now, b"app.other;dc=eu 5 %d" % now]
        daemon.send_tcp(b"\n".join(lines) + b"\n", port=tcp_port)
        daemon.send_tcp(pickle_frame([("app.web.requests", (now, 5.0)),
                                      ("app.db.latency", (now, 30.0)),
                                      ("debug.noise", (now, 2.0))]), port=pickle_port)
        wanted = {("requests.web", "counter"), ("app.db.latency", "timer"),
                  ("app.users", "set"), ("app.other", "gauge")}
        wait_for(lambda: wanted <= set(series(out, "")), what="the rules' series")
        got = series(out, "")
        assert got[("requests.web", "counter")]["stats"]["count"] == 12.0  # 3 + 4 + 5 added
        latency = got[("app.db.latency", "timer")]["stats"]
        assert (latency["count"], latency["sum"], latency["min"], latency["max"]) == (
            2.0, 40.0, 10.0, 30.0)
        assert got[("app.users", "set")]["stats"]["count"] == 2.0  # members "42" and "7"
        assert got[("app.other", "gauge")]["tags"] == {"dc": "eu"}  # no rule: a gauge
        assert not [key for key in got if key[0].startswith(("debug.", "app.web.requests"))]
        tcp, pickled = (f"listener.tcp.127_0_0_1_{p}.datapoints." for p in (tcp_port,
                                                                            pickle_port))
        wait_for(lambda: (counted(out, tcp + "aggregated"), counted(out, tcp + "refused_by_rule"),
                          counted(out, pickled + "aggregated"),
                          counted(out, pickled + "refused_by_rule")) == (7, 1, 2, 1),
                 what="aggregated and refused counted per listener")
        # relaying is not touched by the rules: every datapoint, dropped ones too, raw
        wait_for(lambda: len(carbon.snapshot()) == 11, what="every datapoint relayed")
        assert ("debug.noise", 2.0, float(now)) in carbon.snapshot()
        assert ("app.web.requests", 3.0, float(now)) in carbon.snapshot()
        assert (counted(out, tcp + "relayed"), counted(out, pickled + "relayed")) == (8, 3)
        assert daemon.stop() == 0
    finally:
        carbon.close()


def test_a_reload_changes_the_rules_and_says_when_they_no_longer_fit(
        start_daemon: Any, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "metrics.jsonl"
    config = {"flush_interval": 1,
              "listeners": [graphite_listener("udp", port, graphite_rules="app")],
              "graphite_rules": {"app": [{"prefix": "hits", "type": "counter"}]},
              "forwarders": {"file": {"path": str(out)}}}
    daemon = start_daemon(config)
    daemon.send_udp(b"hits 2 %d\n" % time.time(), port=port)
    wait_for(lambda: ("hits", "counter") in series(out, "hits"), what="a counter")
    written = yaml.safe_load(daemon.config_path.read_text())
    written["graphite_rules"] = {"app": [{"prefix": "hits", "type": "timer", "name": "took"}]}
    daemon.config_path.write_text(yaml.safe_dump(written))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded")
    daemon.send_udp(b"hits 2 %d\n" % time.time(), port=port)
    wait_for(lambda: ("took", "timer") in series(out, "took"), what="the new rule's timer")
    # A file whose listeners name another list: valid on its own, but the running listener
    # (listeners change on restart) names a list the reload took away. Said, and a gauge.
    written["listeners"][0]["graphite_rules"] = "renamed"
    written["graphite_rules"] = {"renamed": written["graphite_rules"]["app"]}
    daemon.config_path.write_text(yaml.safe_dump(written))
    daemon.signal(signal.SIGHUP)
    line = daemon.wait_for_log("do not fit the reloaded graphite_rules")
    assert "listeners[0].graphite_rules: no list 'app'" in line
    daemon.send_udp(b"hits 2 %d\n" % time.time(), port=port)
    wait_for(lambda: ("hits", "gauge") in series(out, "hits"), what="the default gauge")
    assert daemon.stop() == 0


def test_asking_a_relay_mode_daemon_to_aggregate_stops_the_start_naming_the_key(
        start_daemon: Any) -> None:
    daemon = start_daemon({"mode": "relay", "listeners": [
        {"protocol": "tcp", "port": free_port(), "format": "graphite_pickle",
         "graphite_datapoints": ["aggregate"]}]}, ready=False)
    assert daemon.proc.wait(20) != 0
    errors = [line for line in daemon.stderr if "graphite_datapoints" in line]
    assert len(errors) == 1, daemon.stderr
    assert "listeners[0].graphite_datapoints: aggregate is impossible in mode: relay" in errors[0]
