"""The ``carbon_routes`` relay: the contract, carbon-relay-ng's route kinds, matching,
blocklist, rewriters and aggregators, per-destination spools, and placement pinned to
graphite's own ring (``carbon.hashing`` from Debian's graphite-carbon)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import CarbonCache, FakeCarbon, free_port, needs_carbon, wait_for

from forwarders import ForwarderContext, load_forwarder_class
from forwarders.carbon_routes.ring import CarbonRing
from forwarders.contract import RelayContract
from forwarders.statsd_relay.hashing import carbon_position
from pystatsd.config import build_config


def build(tmp_path: Path, debug_mode: bool = False, **keys: Any) -> Any:
    section = build_config({"forwarders": {"routes": {"type": "carbon_routes", **keys}}}
                           )["forwarders"]["routes"]
    return load_forwarder_class("carbon_routes")("routes", section, ForwarderContext(
        debug_mode=debug_mode, state_dir=tmp_path))


def all_to(*carbons: FakeCarbon, **route: Any) -> list[dict[str, Any]]:
    return [{"key": "all", "type": "send_all_match", **route,
             "destinations": [{"address": f"127.0.0.1:{c.port}",
                               "pickle": c.protocol == "pickle"} for c in carbons]}]


def relay(forwarder: Any, lines: list[str]) -> None:
    assert forwarder.submit_lines([line.encode() for line in lines])


class RoutesHarness:
    def __init__(self, tmp_path: Path, carbon: FakeCarbon) -> None:
        self.tmp_path = tmp_path
        self.carbon = carbon

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        return build(self.tmp_path, debug_mode, queue_size=queue_size,
                     routes=all_to(self.carbon))

    def delivered(self) -> int:
        return len(self.carbon.snapshot())


class TestCarbonRoutesContract(RelayContract):
    """The relay contract, fed graphite lines: carbon routes' input is graphite plaintext."""

    def _feed(self, forwarder: Any, batches: int = 2) -> int:
        for index in range(batches):
            assert forwarder.submit_lines([f"contract.m{index}_{i} {i} 1700000000".encode()
                                           for i in range(3)])
        return 3 * batches

    @pytest.fixture
    def harness(self, tmp_path: Path) -> Any:
        carbon = FakeCarbon()
        yield RoutesHarness(tmp_path, carbon)
        carbon.close()


@pytest.fixture
def carbons() -> Any:
    servers = [FakeCarbon(), FakeCarbon(), FakeCarbon("pickle")]
    yield servers
    for server in servers:
        server.close()


def names(carbon: FakeCarbon) -> list[str]:
    return [path for path, _, _ in carbon.snapshot()]


def settle(forwarder: Any) -> None:
    wait_for(lambda: forwarder.pending() == 0, what="everything sent")
    time.sleep(0.2)


def test_route_kinds_matchers_blocklist_and_rewriters(tmp_path: Path,
                                                      carbons: list[FakeCarbon]) -> None:
    a, b, c = carbons
    forwarder = build(tmp_path, blocklist=["prefix collectd.localhost", "regex ^junk\\."],
                      rewriters=[{"old": "/^servers\\.([^.]+)/", "new": "hosts.${1}.os"},
                                 {"old": "old", "new": "new", "max": 1, "not": "keepold"}],
                      routes=[
                          {"key": "every", "type": "send_all_match", "prefix": "hosts.",
                           "destinations": [{"address": f"127.0.0.1:{a.port}"},
                                            {"address": f"127.0.0.1:{b.port}",
                                             "sub": "cpu"}]},
                          {"key": "first", "type": "send_first_match", "not_prefix": "hosts.",
                           "destinations": [{"address": f"127.0.0.1:{b.port}",
                                             "regex": "err(or)?s$"},
                                            {"address": f"127.0.0.1:{c.port}",
                                             "pickle": True}]}])
    forwarder.start()
    try:
        relay(forwarder, ["servers.web1.cpu 1 1700000000", "servers.web2.mem 2 1700000000",
                          "app.errors 3 1700000000", "app.old.old 4 1700000000",
                          "keepold.x 5 1700000000", "collectd.localhost.load 6 1700000000",
                          "junk.thing 7 1700000000", "not a line", "bad.value x 1700000000"])
        settle(forwarder)
    finally:
        assert forwarder.close(5) == 0
    assert names(a) == ["hosts.web1.os.cpu", "hosts.web2.os.mem"]
    assert names(b) == ["hosts.web1.os.cpu", "app.errors"]
    assert c.snapshot() == [("app.new.old", 4.0, 1700000000.0), ("keepold.x", 5.0, 1700000000.0)]
    stats = forwarder.stats()
    assert stats["blocked"] == 2 and stats["refused_lines"] == 2
    assert stats["lines_in"] == 9 and stats["sent"] == 6


def test_a_rewriter_cannot_make_a_line_two(tmp_path: Path, carbons: list[FakeCarbon]) -> None:
    forwarder = build(tmp_path, rewriters=[{"old": "/x/", "new": "y 1 1\nforged"}],
                      routes=all_to(carbons[0]))
    forwarder.start()
    try:
        relay(forwarder, ["a.x 1 1700000000", "a.b 2 1700000000"])
        settle(forwarder)
    finally:
        forwarder.close(5)
    assert carbons[0].snapshot() == [("a.b", 2.0, 1700000000.0)]
    assert forwarder.stats()["refused_lines"] == 1


def test_aggregators_sum_avg_count_into_new_names_per_interval(
        tmp_path: Path, carbons: list[FakeCarbon]) -> None:
    a = carbons[0]
    regex = "^servers\\.(dc[0-9]+)\\.(app|proxy)[0-9]+\\.(.*)"
    forwarder = build(tmp_path, routes=all_to(a), aggregators=[
        {"function": "sum", "regex": regex, "format": "agg.$1.$2.${3}.sum", "interval": 10,
         "wait": 0, "drop_raw": True},
        {"function": "avg", "regex": regex, "format": "agg.$1.$2.$3.avg", "interval": 10,
         "wait": 0},
        {"function": "count", "prefix": "servers.dc2", "regex": regex,
         "format": "agg.$1.count", "interval": 10, "wait": 0}])
    forwarder.start()
    try:
        relay(forwarder, ["servers.dc1.app1.cpu 1 1700000001", "servers.dc1.app2.cpu 3 1700000009",
                          "servers.dc1.app1.cpu 10 1700000010",
                          "servers.dc2.proxy1.rq 4 1700000002", "other.metric 9 1700000000"])
        settle(forwarder)
    finally:
        forwarder.close(5)
    got = {(path, stamp): value for path, value, stamp in a.snapshot()}
    assert got == {
        ("other.metric", 1700000000.0): 9.0,
        ("agg.dc1.app.cpu.sum", 1700000000.0): 4.0, ("agg.dc1.app.cpu.sum", 1700000010.0): 10.0,
        ("agg.dc1.app.cpu.avg", 1700000000.0): 2.0, ("agg.dc1.app.cpu.avg", 1700000010.0): 10.0,
        ("agg.dc2.proxy.rq.sum", 1700000000.0): 4.0, ("agg.dc2.proxy.rq.avg", 1700000000.0): 4.0,
        ("agg.dc2.count", 1700000000.0): 1.0}  # drop_raw: no raw servers.* line got through


def test_an_aggregator_waits_for_late_datapoints(tmp_path: Path,
                                                 carbons: list[FakeCarbon]) -> None:
    now = int(time.time()) // 10 * 10
    forwarder = build(tmp_path, routes=all_to(carbons[0]), aggregators=[
        {"function": "max", "regex": "^(x)$", "format": "$1.max", "interval": 10, "wait": 1000,
         "drop_raw": True}])
    forwarder.start()
    try:
        relay(forwarder, [f"x 1 {now}", f"x 5 {now + 1}"])
        time.sleep(0.3)
        assert carbons[0].snapshot() == []  # the bucket is still open
    finally:
        forwarder.close(5)  # the daemon stopping: open buckets are emitted, not lost
    wait_for(lambda: carbons[0].snapshot() == [("x.max", 5.0, float(now))], what="the flush")


@pytest.mark.parametrize("bad", [{"format": "$2"}, {"regex": "("}])
def test_a_bad_aggregator_stops_start_up_naming_the_key(tmp_path: Path,
                                                        bad: dict[str, str]) -> None:
    spec = {"function": "sum", "regex": "^(a)$", "format": "$1", **bad}
    with pytest.raises(ValueError, match=r"forwarders\.routes\.aggregators\[0\]"):
        build(tmp_path, aggregators=[spec], routes=[
            {"key": "r", "type": "send_all_match", "destinations": [{"address": "127.0.0.1:9"}]}])


def hashing_route(ports: list[int], version: str = "_v2", **route: Any) -> list[dict[str, Any]]:
    return [{"key": "ring", "type": f"consistent_hashing{version}", **route,
             "destinations": [{"address": f"127.0.0.1:{port}", "instance": f"i{n}"}
                              for n, port in enumerate(ports)]}]


def carbon_placement(nodes: list[tuple[str, str | None]], keys: list[str],
                     replication: int = 1) -> list[list[int]]:
    """Where graphite's own ConsistentHashRing puts each key, run by the system python3."""
    program = """
import json, sys
from carbon.hashing import ConsistentHashRing
nodes, keys, replication = json.load(sys.stdin)
nodes = [tuple(n) for n in nodes]
ring = ConsistentHashRing([])
for node in nodes:
    ring.add_node(node)
out = []
for key in keys:
    chosen = []
    for node in ring.get_nodes(key):
        if len(chosen) == replication:
            break
        chosen.append(nodes.index(node))
    out.append(chosen)
json.dump(out, sys.stdout)
"""
    result = subprocess.run(["/usr/bin/python3", "-c", program],
                            input=json.dumps([nodes, keys, replication]), capture_output=True,
                            text=True, check=True)
    placement: list[list[int]] = json.loads(result.stdout)
    return placement


@needs_carbon
@pytest.mark.parametrize("replication", [1, 2])
def test_placement_is_graphite_carbons_own(replication: int) -> None:
    nodes: list[tuple[str, str | None]] = [("10.0.0.1", None), ("10.0.0.2", "a"),
                                           ("10.0.0.2", "b"), ("carbon-3.example", None)]
    keys = [f"servers.host{i}.cpu.{i % 7}.user" for i in range(3000)] + ["", "a;tag=x", "ü.é"]
    expected = carbon_placement(nodes, keys, replication)
    ring = CarbonRing(nodes, version=2)
    ours = [ring.destinations(key.encode(), replication) for key in keys]
    assert ours == expected
    assert len({owner[0] for owner in ours}) == 4  # every destination owns some keys


@needs_carbon
def test_the_v1_ring_differs_from_carbon_only_where_ring_points_collide() -> None:
    nodes: list[tuple[str, str | None]] = [(f"10.0.0.{n}", None) for n in range(1, 9)]
    v1 = CarbonRing(nodes, version=1)
    v2 = CarbonRing(nodes, version=2)
    collided = sorted({p for p in v1.points if v1.points.count(p) > 1})
    assert collided, "800 points in 65536 positions: some collide"
    # keys that hash exactly where carbon 1.x moved a colliding point (position + 1)
    wanted = {p + 1 for p in collided}
    near: list[str] = []
    for i in range(2_000_000):
        if carbon_position(f"near.{i}".encode()) in wanted:
            near.append(f"near.{i}")
            if len(near) >= len(wanted):
                break
    keys = [f"k.{i}" for i in range(3000)] + near
    expected = [owner[0] for owner in carbon_placement(nodes, keys)]
    assert [v2.destinations(k.encode())[0] for k in keys] == expected
    differing = [k for k, e in zip(keys, expected, strict=True)
                 if v1.destinations(k.encode())[0] != e]
    assert differing and set(differing) <= set(near)


@needs_carbon
@pytest.mark.integration
def test_lines_land_in_the_carbon_cache_the_ring_says(tmp_path: Path) -> None:
    with CarbonCache(tmp_path / "c0") as first, CarbonCache(tmp_path / "c1") as second:
        caches = [first, second]
        nodes: list[tuple[str, str | None]] = [("127.0.0.1", "i0"), ("127.0.0.1", "i1")]
        keys = [f"relayed.series{i}" for i in range(60)]
        owners = [owner[0] for owner in carbon_placement(nodes, keys)]
        assert set(owners) == {0, 1}
        forwarder = build(tmp_path, routes=hashing_route([first.line_port, second.line_port]))
        now = int(time.time()) // 10 * 10
        forwarder.start()
        try:
            relay(forwarder, [f"{key} {i}.5 {now}" for i, key in enumerate(keys)])
            wait_for(lambda: forwarder.pending() == 0, what="lines sent")
        finally:
            assert forwarder.close(5) == 0
        owned = [[key for key, o in zip(keys, owners, strict=True) if o == owner]
                 for owner in (0, 1)]
        stored: list[dict[str, dict[int, float]]] = [{}, {}]

        def landed(owner: int) -> bool:
            stored[owner] = caches[owner].values_of(owned[owner], now)
            return all(stored[owner].values())

        for owner in (0, 1):
            wait_for(lambda owner=owner: landed(owner), 30, f"every key in carbon-cache {owner}")
        for i, (key, owner) in enumerate(zip(keys, owners, strict=True)):
            assert stored[owner][key] == {now: i + 0.5}
            assert not caches[1 - owner].file_of(key).exists()


@pytest.mark.parametrize("pickle", [False, True])
def test_spool_per_destination_outage_restart_recovery(tmp_path: Path, pickle: bool) -> None:
    up = FakeCarbon()
    down_port = free_port()
    routes = [{"key": "both", "type": "send_all_match", "destinations": [
        {"address": f"127.0.0.1:{up.port}"},
        {"address": f"127.0.0.1:{down_port}", "spool": True, "pickle": pickle}]}]
    keys = {"routes": routes, "backoff_min": 0.05, "backoff_max": 0.05}
    try:
        first = build(tmp_path, **keys)
        first.start()
        relay(first, [f"outage.a{i} {i} 1700000000" for i in range(5)])
        wait_for(lambda: len(up.snapshot()) == 5, what="the live destination")
        wait_for(lambda: first.stats()[f"destination.127_0_0_1_{down_port}.spooled"] == 5,
                 what="the dead one's lines spooled")
        relay(first, [f"outage.b{i} {i} 1700000010" for i in range(3)])
        assert first.close(5) == 0  # restart during the outage: queued lines go to the spool
        second = build(tmp_path, **keys)
        second.start()
        relay(second, ["outage.c0 0 1700000020"])
        wait_for(lambda: len(up.snapshot()) == 9, what="the live destination after restart")
        back = FakeCarbon("pickle" if pickle else "plaintext", port=down_port)
        try:
            relay(second, ["recovered.d0 0 1700000030"])
            wait_for(lambda: len(back.snapshot()) >= 10, what="the spool replayed")
            time.sleep(0.3)
            assert names(back) == ([f"outage.a{i}" for i in range(5)]
                                   + [f"outage.b{i}" for i in range(3)]
                                   + ["outage.c0", "recovered.d0"])
            stats = second.stats()
            dead = f"destination.127_0_0_1_{down_port}"
            assert stats[f"{dead}.spool_bytes"] == 0 and stats[f"{dead}.spool_dropped"] == 0
        finally:
            assert second.close(5) == 0
            back.close()
        third = build(tmp_path, **keys)  # nothing left to replay twice
        third.start()
        time.sleep(0.2)
        assert third.close(5) == 0
        assert len(back.snapshot()) == 10 and len(up.snapshot()) == 10
    finally:
        up.close()
