"""A backend that refused a connection is not tried again before its backoff has passed, the
backoff doubles per failure in a row up to its maximum, and a success starts it over: what
keeps a relay or the graphite forwarder from hammering a carbon or statsd that is down. Real
loopback sockets on a port nobody listens on; the relays' pumps take the clock as an
argument, so the times here are exact, not slept."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from forwarders.backoff import Backoff
from forwarders.carbon_routes.destination import Destination
from forwarders.graphite.wire import CarbonConnection
from forwarders.statsd_relay.backend import Backend, BackendAddress
from tests.conftest import free_port


def test_backoff_doubles_per_failure_up_to_its_maximum_and_a_success_starts_over() -> None:
    backoff = Backoff(0.5, 2.0)
    waits = []
    for now in (0.0, 10.0, 20.0, 30.0):
        backoff.failed(now)
        waits.append(backoff.next_attempt - now)
    assert waits == [0.5, 1.0, 2.0, 2.0]
    assert backoff.waiting(31.9) and not backoff.waiting(32.0)
    backoff.succeeded()
    backoff.failed(40.0)
    assert backoff.next_attempt == 40.5


def attempt(pump: Callable[[float], None], failures: Callable[[], int], now: float) -> int:
    """Pump at ``now`` until a connect attempt has failed (up to 2 s of real time for a
    non-blocking connect to be refused); the failures counted then."""
    before = failures()
    deadline = time.monotonic() + 2
    pump(now)
    while failures() == before and time.monotonic() < deadline:
        time.sleep(0.005)
        pump(now)
    return failures()


def pumped_on(pump: Callable[[float], None], failures: Callable[[], int], now: float) -> int:
    """Pump at ``now`` twenty times over 0.1 s; the failures counted then."""
    for _ in range(20):
        pump(now)
        time.sleep(0.005)
    return failures()


@pytest.mark.parametrize("kind", ["carbon_routes destination", "statsd_relay tcp backend"])
def test_a_refusing_backend_is_retried_only_after_its_backoff(kind: str) -> None:
    port = free_port(socket.SOCK_STREAM)  # nothing listens there: every connect is refused
    backend: Destination | Backend
    if kind == "carbon_routes destination":
        backend = Destination("127.0.0.1", port, instance=None, pickle=False, queue_lines=10,
                              backoff_min=0.25, backoff_max=1.0, connect_timeout=1.0)
        backend.enqueue(b"a.b 1 1700000000")
    else:
        backend = Backend(BackendAddress("127.0.0.1", port, "tcp"), queue_bytes=1 << 16,
                          max_datagram_bytes=1432, connect_timeout=1.0, backoff_min=0.25,
                          backoff_max=1.0, dead_after=5.0)
        backend.open()
        backend.enqueue([b"a.b:1|c"])

    def failures() -> int:
        return backend.counters["connect_failures"]

    try:
        assert attempt(backend.pump, failures, 1.0) == 1
        # within the first 0.25 s: not one more connect, however often it is pumped
        assert pumped_on(backend.pump, failures, 1.24) == 1
        assert attempt(backend.pump, failures, 1.25) == 2
        # the second failure in a row waits twice as long, 0.5 s
        assert pumped_on(backend.pump, failures, 1.74) == 2
        assert attempt(backend.pump, failures, 1.75) == 3
        assert backend.counters["connects"] == 0
    finally:
        backend.close()


def test_the_graphite_forwarders_carbon_connection_backs_off_after_a_refusal() -> None:
    port = free_port(socket.SOCK_STREAM)
    connection = CarbonConnection("127.0.0.1", port, connect_timeout=1.0, send_timeout=1.0,
                                  backoff_min=0.3, backoff_max=1.0)
    with pytest.raises(OSError):
        connection.send(b"a.b 1 1700000000\n")  # refused
    assert not connection.ready()
    with pytest.raises(ConnectionError, match="backing off"):
        connection.send(b"a.b 1 1700000000\n")  # not tried: no connect to carbon
    with socket.socket() as carbon:
        carbon.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        carbon.bind(("127.0.0.1", port))
        carbon.listen(1)
        time.sleep(0.35)
        assert connection.ready()
        connection.send(b"a.b 1 1700000000\n")
        assert connection.connects == 1
        connection.close()
