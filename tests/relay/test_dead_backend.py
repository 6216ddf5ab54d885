"""A dead backend: its queue stays bounded and is counted (hold), or its keys go to their next
owner and come back when it returns (reroute); TCP never delivers a truncated line."""

from __future__ import annotations

import re
import time

import pytest

from forwarders.statsd_relay.hashing import JumpRouter
from tests.relay.conftest import backend_stat, wait_until

LINE = re.compile(rb"^m\d+:\d+\|c$")
QUEUE_BYTES = 32 * 1024


def _load(relay, seq: int, router: JumpRouter, owned: list[list[bytes]], datagrams: int) -> int:
    """Submit ``datagrams`` datagrams of 20 lines; record each line under its owner."""
    for _ in range(datagrams):
        lines = []
        for _ in range(20):
            line = f"m{seq % 997}:{seq}|c".encode()
            owned[router.owner(line.split(b":")[0])].append(line)
            lines.append(line)
            seq += 1
        relay.submit_lines(lines)
    return seq


@pytest.mark.slow
def test_tcp_backend_down_10s_under_load_keeps_bounded_queue_and_drains(
        udp_backends, tcp_backend, make_relay):
    (udp,) = udp_backends(1)
    tcp = tcp_backend()
    relay = make_relay({"queue_bytes": QUEUE_BYTES, "dead_after": 0.5,
                        "reconnect_backoff_min": 0.05, "reconnect_backoff_max": 0.4,
                        "groups": [{"hash": "jump", "dead_backend_policy": "hold",
                                    "backends": [udp.spec, tcp.spec]}]})
    key = backend_stat(tcp, "")
    router = JumpRouter([0, 1])
    owned: list[list[bytes]] = [[], []]
    seq = _load(relay, 0, router, owned, 50)
    assert wait_until(lambda: len(tcp.lines()) == len(owned[1]))

    tcp.stop()
    down_started = len(owned[1])
    largest_queue = 0
    end = time.monotonic() + 10
    while time.monotonic() < end:  # about 4000 lines/s, half of them owned by the TCP backend
        seq = _load(relay, seq, router, owned, 4)
        largest_queue = max(largest_queue, relay.stats()[key + "queued_bytes"])
        time.sleep(0.02)
    stats = relay.stats()
    assert 0 < largest_queue <= QUEUE_BYTES
    assert stats[key + "dropped_queue_full"] > 0
    assert stats[key + "failing"] == 1
    held = stats[key + "queued_bytes"]
    assert held > QUEUE_BYTES // 2  # it kept its queue while down

    tcp.restart()
    assert wait_until(lambda: relay.stats()[key + "queued_bytes"] == 0, timeout=10)

    def held_lines_arrived() -> bool:  # sent is not yet read by the backend on a busy machine
        return len(set(tcp.lines()) & set(owned[1][down_started:])) * 15 >= held

    assert wait_until(held_lines_arrived, timeout=10)
    stats = relay.stats()
    received = tcp.lines()
    assert all(LINE.match(line) for line in received)  # whole lines only, on every connection
    assert len(received) == len(set(received))
    assert set(received) <= set(owned[1])
    held_lines = set(received) & set(owned[1][down_started:])
    assert len(held_lines) * 15 >= held  # the queue held while down was delivered
    lost = (len(owned[1]) - len(received) - stats[key + "dropped_queue_full"]
            - stats[key + "dropped_partial"])
    assert 0 <= lost <= 400  # at most what was in flight when the backend went away
    assert stats[key + "failing"] == 0
    assert wait_until(lambda: len(udp.lines()) == len(owned[0]))  # the live backend lost nothing


def test_reroute_sends_dead_backends_keys_to_next_owner_and_back(
        udp_backends, tcp_backend, make_relay):
    udps = udp_backends(2)
    tcp = tcp_backend()
    specs = [udps[0].spec, tcp.spec, udps[1].spec]
    relay = make_relay({"dead_after": 0.2, "reconnect_backoff_min": 0.05,
                        "reconnect_backoff_max": 0.2,
                        "groups": [{"name": "main", "hash": "jump",
                                    "dead_backend_policy": "reroute", "backends": specs}]})
    router = JumpRouter([0, 1, 2])
    names = [f"svc.m{i}".encode() for i in range(300)]
    tcp_names = [n for n in names if router.owner(n) == 1]
    relay.submit_lines([n + b":1|c" for n in names])
    assert wait_until(lambda: len(tcp.lines()) == len(tcp_names))

    tcp.stop()
    for _ in range(100):  # traffic for the TCP backend finds it down
        relay.submit_lines([tcp_names[0] + b":1|c"])
        time.sleep(0.01)
        if relay.stats()["dead_backend_changes"]:
            break
    assert wait_until(lambda: relay.stats()["dead_backend_changes"] == 1, timeout=5)
    time.sleep(0.05)
    before = [len(u.lines()) for u in udps]
    rerouted_before = relay.stats()["group.main.rerouted_lines"]
    relay.submit_lines([n + b":2|c" for n in names])
    assert wait_until(lambda: sum(len(u.lines()) for u in udps) - sum(before) == len(names))
    rerouted = [line for u in udps for line in u.lines() if line.endswith(b":2|c")]
    for line in rerouted:  # a live owner's keys did not move; the dead one's went to a live one
        name = line.split(b":")[0]
        expected = router.fallback(name, {1})
        assert line in udps[0 if expected == 0 else 1].lines()
    assert relay.stats()["group.main.rerouted_lines"] - rerouted_before == len(tcp_names)

    tcp.restart()
    assert wait_until(lambda: relay.stats()[backend_stat(tcp, "failing")] == 0, timeout=5)
    assert wait_until(lambda: relay.stats()["dead_backend_changes"] >= 2, timeout=5)
    relay.submit_lines([n + b":3|c" for n in names])
    assert wait_until(lambda: sum(line.endswith(b":3|c") for line in tcp.lines())
                      == len(tcp_names))


def test_health_probe_marks_udp_backend_dead_and_back(udp_backends, tcp_backend, make_relay):
    first, second = udp_backends(2)
    management = tcp_backend()  # stands for the aggregator's management port (Etsy: 8126)
    relay = make_relay({
        "health_check_interval": 0.05, "connect_timeout": 0.5,
        "groups": [{"name": "main", "dead_backend_policy": "reroute", "backends": [
            first.spec,
            {"host": "127.0.0.1", "port": second.port, "health_port": management.port}]}]})
    router = JumpRouter([0, 1])
    names = [f"n{i}".encode() for i in range(100)]
    second_names = {n for n in names if router.owner(n) == 1}

    management.stop()
    assert wait_until(lambda: relay.stats()["dead_backend_changes"] == 1, timeout=5)
    relay.submit_lines([n + b":1|c" for n in names])
    assert wait_until(lambda: len(first.lines()) == len(names))  # all of them, rerouted
    assert relay.stats()["group.main.rerouted_lines"] == len(second_names)
    assert second.lines() == []

    management.restart()
    assert wait_until(lambda: relay.stats()["dead_backend_changes"] == 2, timeout=5)
    relay.submit_lines([n + b":2|c" for n in names])
    assert wait_until(lambda: len(second.lines()) == len(second_names))
    assert {line.split(b":")[0] for line in second.lines()} == second_names


def test_closed_udp_port_is_noticed_and_rerouted(udp_backends, make_relay):
    first, second = udp_backends(2)
    relay = make_relay({"dead_after": 0.1, "reconnect_backoff_min": 0.02,
                        "reconnect_backoff_max": 0.05,
                        "groups": [{"name": "main", "dead_backend_policy": "reroute",
                                    "backends": [first.spec, second.spec]}]})
    router = JumpRouter([0, 1])
    second_name = next(f"n{i}".encode() for i in range(100) if router.owner(f"n{i}".encode()))
    second.close()  # nobody listens on its port: the kernel answers "port unreachable"

    def dead() -> bool:
        relay.submit_lines([second_name + b":1|c"])
        time.sleep(0.01)
        return relay.stats()["dead_backend_changes"] == 1

    assert wait_until(dead, timeout=5)
    relay.submit_lines([second_name + b":7|c"])
    assert wait_until(lambda: second_name + b":7|c" in first.lines())


def test_close_reports_lines_it_could_not_deliver(udp_backends, tcp_backend, make_relay):
    (udp,) = udp_backends(1)
    tcp = tcp_backend()
    tcp.stop()  # nobody accepts: every line owned by the TCP backend stays queued
    relay = make_relay({"groups": [{"backends": [udp.spec, tcp.spec]}]})
    router = JumpRouter([0, 1])
    lines = [f"c{i}:1|c".encode() for i in range(200)]
    relay.submit_lines(lines)
    assert wait_until(lambda: len(udp.lines()) == sum(
        1 for line in lines if router.owner(line.split(b":")[0]) == 0))
    left = relay.close(0.3)
    assert left == sum(1 for line in lines if router.owner(line.split(b":")[0]) == 1)
    assert relay.stats()["undelivered_at_close"] == left
