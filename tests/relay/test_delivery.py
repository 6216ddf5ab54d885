"""The relay delivers each line to its owner and nowhere else, in whole lines and datagrams the
network accepts, through several destination groups with their rewrites and filters."""

from __future__ import annotations

import time
from collections import Counter

from forwarders.statsd_relay.hashing import JumpRouter, ShardMapRouter
from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from tests.relay.conftest import backend_stat, wait_until


def _datagrams(lines: list[bytes], per: int = 20) -> list[list[bytes]]:
    return [lines[i:i + per] for i in range(0, len(lines), per)]


def test_every_line_reaches_its_owner_and_nowhere_else(udp_backends, tcp_backend, make_relay):
    backends = [*udp_backends(4), tcp_backend()]
    relay = make_relay({"groups": [{"hash": "jump", "backends": [b.spec for b in backends]}]})
    lines = [f"app.metric{i}:{i}|c".encode() for i in range(3000)]
    lines += [f"app.metric{i}:{i}|ms|@0.5|#env:prod".encode() for i in range(0, 3000, 7)]
    for datagram in _datagrams(lines):
        assert relay.submit_lines(datagram)

    assert wait_until(lambda: sum(len(b.lines()) for b in backends) >= len(lines))
    router = JumpRouter(range(5))
    for index, backend in enumerate(backends):
        expected = Counter(line for line in lines if router.owner(line.split(b":")[0]) == index)
        assert Counter(backend.lines()) == expected, backend.spec
    stats = relay.stats()
    assert stats["sent"] == len(lines)
    assert stats["not_relayable"] == 0


def test_udp_datagrams_hold_whole_lines_within_the_size_limit(udp_backends, make_relay):
    (backend,) = udp_backends(1)
    relay = make_relay({"max_datagram_bytes": 200,
                        "groups": [{"backends": [backend.spec]}]})
    lines = [f"svc.m{i}:{i}|c".encode() for i in range(500)]
    long_line = b"long." + b"x" * 3000 + b":1|c"   # longer than 200: sent alone
    huge_line = b"huge." + b"y" * 70000 + b":1|c"  # longer than any UDP datagram: dropped
    relay.submit_lines(lines[:250] + [long_line, huge_line] + lines[250:])

    assert wait_until(lambda: len(backend.lines()) >= 501)
    assert sorted(backend.lines()) == sorted([*lines, long_line])
    assert all(len(d) <= 200 for d in backend.datagrams if d != long_line)
    assert long_line in backend.datagrams
    assert len(backend.datagrams) < 150  # lines are packed, not one datagram each
    stats = relay.stats()
    assert stats[backend_stat(backend, "dropped_too_long")] == 1


def test_groups_rewrite_filter_and_blacklist(udp_backends, make_relay):
    backends = udp_backends(4)
    relay = make_relay({"groups": [
        {"name": "all", "hash": "jump", "prefix": "relay.", "suffix": ".x",
         "backends": [b.spec for b in backends[:2]]},
        {"name": "api", "hash": "shard_map", "filter": r"^api\.", "blacklist": "secret",
         "append_tags": "dc:eu1", "backends": [b.spec for b in backends[2:]]},
    ]})
    lines = [b"api.requests:1|c", b"api.secret.tokens:2|c", b"db.queries:3|c|#env:prod",
             b"api.latency:12|ms|#route:a"]
    relay.submit_lines(lines)

    expected_first = [b"relay.api.requests.x:1|c", b"relay.api.secret.tokens.x:2|c",
                      b"relay.db.queries.x:3|c|#env:prod", b"relay.api.latency.x:12|ms|#route:a"]
    expected_second = [b"api.requests:1|c|#dc:eu1", b"api.latency:12|ms|#route:a,dc:eu1"]
    assert wait_until(lambda: sum(len(b.lines()) for b in backends) >= 6)
    jump, shards = JumpRouter([0, 1]), ShardMapRouter([2, 3])
    for line, original in zip(expected_first, lines, strict=True):
        # hashed on the name as received, before the rewrite (lyft's rule)
        owner = backends[jump.owner(original.split(b":")[0])]
        assert line in owner.lines()
    for line in expected_second:
        assert line in backends[shards.owner(line.split(b":")[0])].lines()
    assert sorted(sum((b.lines() for b in backends), [])) == sorted(
        expected_first + expected_second)
    stats = relay.stats()
    assert stats["group.api.filtered_lines"] == 1
    assert stats["group.api.rejected_lines"] == 1


def test_hash_key_name_and_tags_spreads_series_of_one_name(udp_backends, make_relay):
    backends = udp_backends(4)
    relay = make_relay({"hash_key": "name_and_tags",
                        "groups": [{"backends": [b.spec for b in backends]}]})
    lines = [f"http.requests:1|c|#host:web{i},env:prod".encode() for i in range(200)]
    swapped = [f"http.requests:1|c|#env:prod,host:web{i}".encode() for i in range(200)]
    relay.submit_lines(lines)
    relay.submit_lines(swapped)

    assert wait_until(lambda: sum(len(b.lines()) for b in backends) >= 400)
    holders = [b for b in backends if b.lines()]
    assert len(holders) >= 3  # one name, spread by its tags
    for i in range(200):  # tag order does not change the owner
        owner = [b for b in backends if lines[i] in b.lines()]
        assert len(owner) == 1 and swapped[i] in owner[0].lines()


def _through_receive_path(relay, *payloads: bytes) -> SelfStats:
    """Hand payloads to ``relay`` the way the daemon does in ``mode: relay``: the receive path
    splits them and makes JSON input into statsd lines."""
    config = build_config({"mode": "relay", "forwarders": {}})
    stats = SelfStats()
    pipeline = Pipeline(config, MetricMgr(config), stats, relays=[relay])
    for payload in payloads:
        pipeline.ingest(payload)
    return stats


def test_json_lines_are_relayed_as_statsd_lines(udp_backends, make_relay):
    (backend,) = udp_backends(1)
    relay = make_relay({"groups": [{"backends": [backend.spec]}]})
    stats = _through_receive_path(relay, b"\n".join([
        b'{"metric_name":"cfbroker.latency","metric_type":"guage","value":43,"stage":"ok"}',
        b'{"metric_name":"cfbroker.trace","metric_type":"trace","user":"x"}',
        b'{"metric_name":"t","metric_type":"gauge","value":-5}',
        b'{"metric_name": broken',
        b"{braces}.in.name:1|c",
        b"no colon here",
    ]))
    assert wait_until(lambda: len(backend.lines()) >= 5)
    assert sorted(backend.lines()) == sorted([
        b"cfbroker.latency:43|g|#stage:ok", b"cfbroker.trace:1|c|#user:x", b"t:0|g", b"t:-5|g",
        b"{braces}.in.name:1|c"])
    assert relay.stats()["json_converted"] == 4  # lines made from JSON (the gauge takes two)
    assert relay.stats()["not_relayable"] == 1  # "no colon here"
    assert stats.counters["rejected.bad_json"] == 1


def test_pretty_printed_json_datagram_is_relayed_whole(udp_backends, make_relay):
    (backend,) = udp_backends(1)
    relay = make_relay({"groups": [{"backends": [backend.spec]}]})
    datagram = (b'[\n  {"metric_name": "a.b", "metric_type": "counter", "value": 2},\n'
                b'  {"metric_name": "c.d", "metric_type": "timer", "value": 1.5,'
                b' "sample_rate": 0.5}\n]')
    stats = _through_receive_path(
        relay, datagram,
        b'{"metric_name":"e","metric_type":"gauge","value":1}\n'
        b'{"metric_name":"f","metric_type":"gauge","value":2}')  # one object per line
    assert wait_until(lambda: len(backend.lines()) >= 4)
    assert backend.lines() == [b"a.b:2|c", b"c.d:1.5|ms|@0.5", b"e:1|g", b"f:2|g"]
    assert relay.stats()["not_relayable"] == 0 and not stats.counters


def test_json_lines_rejected_when_configured(udp_backends, make_relay):
    (backend,) = udp_backends(1)
    relay = make_relay({"json_lines": "reject", "groups": [{"backends": [backend.spec]}]})
    _through_receive_path(relay, b'{"metric_name":"a","metric_type":"counter","value":1}\nb:1|c')
    assert wait_until(lambda: backend.lines() == [b"b:1|c"])
    assert relay.stats()["not_relayable"] == 1


def test_json_tags_never_become_statsd_syntax_at_the_backend(udp_backends, make_relay):
    """Found by probing: a JSON tag value holding a newline arrived at the backend as a second,
    forged metric, and one holding ``|@...`` as a sample rate."""
    (backend,) = udp_backends(1)
    relay = make_relay({"groups": [{"backends": [backend.spec]}]})
    stats = _through_receive_path(
        relay,
        b'{"metric_name":"a","metric_type":"counter","value":1,"env":"x\\nforged:999|c"}',
        b'{"metric_name":"b","metric_type":"counter","value":1,"env":"x|@0.001"}',
        b'{"metric_name":"c|ms","metric_type":"counter","value":1}',
        b'{"metric_name":"ok","metric_type":"counter","value":1,"env":"a:b"}')
    assert wait_until(lambda: backend.lines() == [b"ok:1|c|#env:a:b"])
    time.sleep(0.05)
    assert backend.lines() == [b"ok:1|c|#env:a:b"]
    assert stats.counters["rejected.statsd_syntax"] == 3


def test_debug_mode_logs_each_line_with_its_owner_instead_of_sending(udp_backends, caplog):
    from forwarders.base import ForwarderContext
    from forwarders.statsd_relay import StatsdRelayForwarder

    (backend,) = udp_backends(1)
    relay = StatsdRelayForwarder("relay", {"groups": [{"backends": [backend.spec]}]},
                                 ForwarderContext(debug_mode=True))
    relay.start()
    try:
        with caplog.at_level("INFO", logger="pystatsd.forwarders.relay"):
            relay.submit_lines([b"dbg.metric:1|c"])
            assert wait_until(lambda: "dbg.metric:1|c" in caplog.text)
    finally:
        relay.close(1.0)
    assert f"not sent to {backend.spec}" in caplog.text
    assert backend.datagrams == []
