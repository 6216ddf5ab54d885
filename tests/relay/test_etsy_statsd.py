"""Real Etsy statsd (npm ``statsd``) behind the relay aggregates what it aggregates when fed
directly: the relay loses, duplicates and splits nothing."""

from __future__ import annotations

import random
import socket
import time

import pytest

from forwarders.statsd_relay.hashing import JumpRouter
from tests.relay.conftest import wait_until

pytestmark = pytest.mark.integration


def _workload() -> list[bytes]:
    rng = random.Random(7)
    lines = []
    for i in range(4000):
        name = f"web.{rng.choice(['api', 'db', 'cache'])}.m{rng.randrange(300)}"
        if rng.random() < 0.2:
            lines.append(f"{name}.sampled:{rng.randrange(1, 9)}|c|@0.5".encode())
        else:
            lines.append(f"{name}:{rng.randrange(1, 100)}|c".encode())
        if i % 10 == 0:
            lines.append(f"{name}.level:{i}|g".encode())
    return lines


def _send_paced(datagrams: list[list[bytes]], port: int) -> None:
    """Node's default receive buffer drops bursts, with or without a relay in front."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i, datagram in enumerate(datagrams):
            sock.sendto(b"\n".join(datagram), ("127.0.0.1", port))
            if i % 5 == 4:
                time.sleep(0.003)


def test_etsy_statsd_behind_relay_matches_direct_feed(etsy_statsd, start_daemon):
    direct, first, second = etsy_statsd(), etsy_statsd(), etsy_statsd()
    lines = _workload()
    datagrams = [lines[i:i + 20] for i in range(0, len(lines), 20)]
    relay = start_daemon({
        "mode": "relay", "listeners": [{"protocol": "udp"}],
        "forwarders": {"relay": {"type": "statsd_relay", "groups": [{"hash": "jump", "backends": [
            f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]}]}},
    })
    _send_paced(datagrams, direct.port)
    _send_paced(datagrams, relay.port)

    total = sum(float(line.split(b":")[1].split(b"|")[0]) / (0.5 if b"@0.5" in line else 1)
                for line in lines if b"|c" in line)
    assert wait_until(lambda: sum(direct.counters().values()) == total, timeout=10)
    assert wait_until(lambda: sum(first.counters().values())
                      + sum(second.counters().values()) == total, timeout=10)
    direct_counters = direct.counters()
    relayed = [first.counters(), second.counters()]
    assert not set(relayed[0]) & set(relayed[1])  # each metric has exactly one owner
    assert {**relayed[0], **relayed[1]} == direct_counters
    router = JumpRouter([0, 1])
    for name in direct_counters:
        assert name in relayed[router.owner(name.encode())]
    assert len(direct_counters) > 500
    gauges = direct.gauges()  # last value wins: the relay kept each name's lines in order
    assert len(gauges) > 100
    assert {**first.gauges(), **second.gauges()} == gauges
