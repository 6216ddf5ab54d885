"""The Python client: what it puts on the wire, and that the old agent's calls still work."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest

from pystatsd.client import PystatAgent, StatsClient
from pystatsd.decoders import parse_json_object


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def received(sock: socket.socket) -> dict[str, object]:
    message: dict[str, object] = orjson.loads(sock.recv(65535))
    return message


def test_old_agent_calls_send_what_the_old_daemon_expected(receiver: socket.socket) -> None:
    with PystatAgent("127.0.0.1", receiver.getsockname()[1]) as agent:
        agent.trace("cfbroker.trace", {"username": "x", "stage": "initialize"})
        agent.guage("cfbroker.latency", 43, {"stage": "success"})
    assert received(receiver) == {"host": socket.gethostname(), "username": "x",
                                  "stage": "initialize", "metric_name": "cfbroker.trace",
                                  "metric_type": "trace"}
    assert received(receiver) == {"host": socket.gethostname(), "stage": "success",
                                  "metric_name": "cfbroker.latency", "metric_type": "gauge",
                                  "value": 43}


def test_every_call_decodes_to_the_intended_sample(receiver: socket.socket) -> None:
    with StatsClient("127.0.0.1", receiver.getsockname()[1], add_host=False) as client:
        client.counter("hits", 2, {"env": "stage"}, sample_rate=0.5)
        client.gauge("temp", 21.5)
        client.timer("lat", 12.5)
        client.set("users", "alice")
    samples = [parse_json_object(received(receiver)) for _ in range(4)]
    assert [(s.name, s.type, s.value, s.rate, s.tags) for s in samples] == [
        ("hits", "counter", 2.0, 0.5, (("env", "stage"),)),
        ("temp", "gauge", 21.5, 1.0, ()),
        ("lat", "timer", 12.5, 1.0, ()),
        ("users", "set", "alice", 1.0, ()),
    ]


def test_a_send_error_is_counted_not_raised() -> None:
    client = StatsClient("127.0.0.1", 9)
    client.close()  # sending on a closed socket fails
    client.counter("x")
    assert client.send_errors == 1


def test_the_host_tag_is_on_by_default_and_a_callers_own_host_wins(
        receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    with StatsClient("127.0.0.1", port) as default, \
            StatsClient("127.0.0.1", port, add_host=False) as bare:
        default.counter("hits")
        default.counter("hits", 1, {"host": "lb1"})
        bare.counter("hits")
    tags = [parse_json_object(received(receiver)).tags for _ in range(3)]
    assert tags == [(("host", socket.gethostname()),), (("host", "lb1"),), ()]
