"""The real daemon in ``mode: relay``: lines received over UDP and TCP reach their owners among
four UDP backends and one TCP backend, and nowhere else."""

from __future__ import annotations

import socket
from collections import Counter

import pytest

from forwarders.statsd_relay.hashing import ShardMapRouter
from tests.relay.conftest import wait_until

pytestmark = pytest.mark.integration


def test_daemon_in_relay_mode_delivers_each_line_to_its_owner(
        start_daemon, udp_backends, tcp_backend):
    backends = [*udp_backends(4), tcp_backend()]
    # lyft-style: 10 virtual shards over 5 backends
    shard_map = [b.spec for b in backends] * 2
    daemon = start_daemon({
        "mode": "relay",
        "listeners": [{"protocol": "udp"}, {"protocol": "tcp"}],
        "forwarders": {"relay": {"type": "statsd_relay",
                                 "groups": [{"hash": "shard_map", "backends": shard_map}]}},
    })
    udp_lines = [f"api.m{i}:{i}|c".encode() for i in range(1000)]
    tcp_lines = [f"tcp.m{i}:{i}|ms|#env:prod".encode() for i in range(300)]
    json_line = b'{"metric_name":"json.m","metric_type":"counter","value":2,"env":"prod"}'
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(0, len(udp_lines), 20):
            sock.sendto(b"\n".join(udp_lines[i:i + 20]), ("127.0.0.1", daemon.port))
        sock.sendto(json_line, ("127.0.0.1", daemon.port))
    daemon.send_tcp(b"\n".join(tcp_lines) + b"\n")

    expected_lines = [*udp_lines, *tcp_lines, b"json.m:2|c|#env:prod"]
    assert wait_until(lambda: sum(len(b.lines()) for b in backends) >= len(expected_lines),
                      timeout=10)
    router = ShardMapRouter([0, 1, 2, 3, 4] * 2)
    for index, backend in enumerate(backends):
        owned = Counter(line for line in expected_lines
                        if router.owner(line.split(b":")[0]) == index)
        assert Counter(backend.lines()) == owned, backend.spec
    assert daemon.stop() == 0
