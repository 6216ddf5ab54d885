"""The ``statsite_proxy`` relay: the contract, statsite-proxy's ketama placement (its ring
vectors), and ASCII lines and binary frames routed whole by key to real TCP statsite stand-ins
that read them with the statsite decoder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import TcpSink, wait_for
from statsite_wire import COUNTER, TIMER, frame, set_frame

from forwarders import ForwarderContext, load_forwarder_class
from forwarders.contract import RelayContract
from forwarders.statsite_proxy import command_key
from pystatsd.config import build_config
from pystatsd.decoders.statsite import decode_statsite
from pystatsd.sample import Sample
from pystatsd.selfstats import SelfStats


class StatsiteSink(TcpSink):
    """A statsite stand-in on TCP: decodes its stream as statsite would (ASCII and binary)."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.stats = SelfStats()
        super().__init__()

    def _take(self, buffer: bytes) -> bytes:
        samples, used = decode_statsite(buffer, self.stats, final=False)
        self.samples.extend(samples)
        return buffer[used:]


def build(tmp_path: Path, servers: list[dict[str, Any]], debug_mode: bool = False,
          **keys: Any) -> Any:
    section = build_config({"forwarders": {"proxy": {"type": "statsite_proxy",
                                                     "servers": servers, **keys}}}
                           )["forwarders"]["proxy"]
    return load_forwarder_class("statsite_proxy")("proxy", section, ForwarderContext(
        debug_mode=debug_mode, state_dir=tmp_path))


class ProxyHarness:
    def __init__(self, tmp_path: Path, sink: StatsiteSink) -> None:
        self.tmp_path = tmp_path
        self.sink = sink

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        return build(self.tmp_path, [{"address": f"127.0.0.1:{self.sink.port}", "weight": 1}],
                     debug_mode, queue_size=queue_size)

    def delivered(self) -> int:
        return len(self.sink.samples)


class TestStatsiteProxyContract(RelayContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Any:
        sink = StatsiteSink()
        yield ProxyHarness(tmp_path, sink)
        sink.close()


def test_placement_is_statsite_proxys_ketama(tmp_path: Path) -> None:
    # statsite-proxy's servers.conf 10.0.0.1/.2/.3:8125 at 100/100/200 (docs/relay.md vectors)
    proxy = build(tmp_path, [{"address": "10.0.0.1:8125", "weight": 100},
                             {"address": "10.0.0.2:8125", "weight": 100},
                             {"address": "10.0.0.3:8125", "weight": 200}])
    owners = {key: proxy.owner(key.encode()) for key in
              ("foo.bar", "a.b.c", "servers.web1.cpu", "api.requests", "x")}
    assert owners == {"foo.bar": 2, "a.b.c": 1, "servers.web1.cpu": 2, "api.requests": 1,
                      "x": 1}


def test_command_keys_are_what_statsite_proxy_hashes() -> None:
    assert command_key(b"api.requests:1|c|@0.5") == b"api.requests"
    assert command_key(frame(COUNTER, "bin.key", 1)) == b"bin.key"
    assert command_key(set_frame("set.key", "member")) == b"set.key"
    assert command_key(b"no colon here") is None
    assert command_key(frame(COUNTER, "cut", 1)[:-2]) is None


def test_ascii_and_binary_go_whole_to_their_keys_owner(tmp_path: Path) -> None:
    sinks = [StatsiteSink(), StatsiteSink()]
    proxy = build(tmp_path, [{"address": f"127.0.0.1:{s.port}", "weight": 100} for s in sinks])
    keys = [f"metric.{i}" for i in range(40)]
    owners = [proxy.owner(key.encode()) for key in keys]
    assert set(owners) == {0, 1}
    commands: list[bytes] = []
    expected: list[list[Sample]] = [[], []]
    for i, (key, owner) in enumerate(zip(keys, owners, strict=True)):
        # a binary key may hold what ASCII cannot: it still routes by the same key text
        commands += [f"{key}:{i}|c".encode(), frame(TIMER, key, i + 0.5),
                     set_frame(key, f"m{i}\n|odd")]
        expected[owner] += [Sample(key, "counter", float(i)), Sample(key, "timer", i + 0.5),
                            Sample(key, "set", f"m{i}\n|odd")]
    commands.append(b"refused-without-colon")
    proxy.start()
    try:
        assert proxy.submit_lines(commands)
        wait_for(lambda: sum(len(s.samples) for s in sinks) >= 120, what="every command")
        time.sleep(0.2)
    finally:
        assert proxy.close(5) == 0
        for sink in sinks:
            sink.close()
    for owner, sink in enumerate(sinks):
        assert sink.samples == expected[owner]
        assert sink.stats.counters == {}  # nothing arrived cut or malformed
    assert proxy.stats()["refused"] == 1


def test_servers_changed_at_runtime_place_each_command_on_the_ring_of_its_time(
        tmp_path: Path) -> None:
    """A server added, reweighted and removed between datagrams: what was submitted before a
    change lands where the old ring put it, what comes after where the new one does, each
    command once; a server that stays keeps its connection; a bad list changes nothing."""
    first, second = StatsiteSink(), StatsiteSink()
    address = [f"127.0.0.1:{s.port}" for s in (first, second)]
    proxy = build(tmp_path, [{"address": address[0], "weight": 100}])
    keys = [f"live.{i}" for i in range(60)]
    proxy.start()
    try:
        expected: dict[str, list[str]] = {a: [] for a in address}

        def batch(tag: int) -> None:
            assert proxy.submit_lines([f"{key}:{tag}|c".encode() for key in keys])
            # the owner as the ring is now: routing runs on the sender thread, but a change
            # first places what was submitted before it
            ring = [route["name"] for route in proxy.routes()]
            for key in keys:
                expected[ring[proxy.owner(key.encode())]].append(f"{key}:{tag}")

        batch(1)
        proxy.apply_routes([*proxy.routes(), {"name": address[1], "weight": 100}])
        batch(2)
        assert expected[address[1]] and len(expected[address[0]]) > len(keys)
        with pytest.raises(ValueError, match=r"servers\[1\]\.weight"):
            proxy.apply_routes([proxy.routes()[0], {"name": address[1], "weight": 0}])
        assert proxy.routes() == [{"name": address[0], "weight": 100},
                                  {"name": address[1], "weight": 100}]
        proxy.apply_routes([{"name": address[1], "weight": 100}])  # the first one removed
        batch(3)
        total = 3 * len(keys)
        wait_for(lambda: len(first.samples) + len(second.samples) == total, what="delivered")
        for sink, want in zip((first, second), expected.values(), strict=True):
            got = [f"{s.name}:{int(s.value)}" for s in sink.samples]  # type: ignore[arg-type]
            assert sorted(got) == sorted(want)
        assert first.connections == 1 and second.connections == 1
        wait_for(lambda: not any(k.startswith(f"server.127_0_0_1_{first.port}.")
                                 for k in proxy.stats()), what="the removed server closed")
        assert proxy.close(5) == 0
    finally:
        first.close()
        second.close()
