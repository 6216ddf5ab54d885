"""Property: whatever lines a UDP backend queues, the datagrams it sends hold exactly those lines,
in order, whole, each datagram within the size limit unless it is one long line alone."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from forwarders.statsd_relay.backend import Backend, BackendAddress

LINE = st.binary(min_size=1, max_size=3000).map(lambda b: b.replace(b"\n", b"_"))


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(LINE, min_size=1, max_size=60),
       limit=st.integers(min_value=64, max_value=1500))
def test_udp_datagrams_are_whole_lines_in_order_within_the_limit(lines, limit):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(1.0)
        backend = Backend(BackendAddress("127.0.0.1", sink.getsockname()[1], "udp"),
                          queue_bytes=1 << 20, max_datagram_bytes=limit, connect_timeout=1,
                          backoff_min=0.1, backoff_max=1, dead_after=1)
        backend.open()
        try:
            backend.enqueue(lines)
            backend.pump(0.0)
            assert not backend.buffer
            datagrams = [sink.recv(65535) for _ in range(backend.counters["datagrams_sent"])]
        finally:
            backend.close()
    for datagram in datagrams:
        assert len(datagram) <= limit or b"\n" not in datagram
    assert [line for d in datagrams for line in d.split(b"\n")] == lines
    assert backend.counters["relayed_lines"] == len(lines)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(LINE, min_size=1, max_size=20), min_size=1, max_size=20),
       bound=st.integers(min_value=1024, max_value=20000))
def test_queue_never_exceeds_its_bound_and_counts_every_dropped_line(batches, bound):
    backend = Backend(BackendAddress("127.0.0.1", 9, "tcp"), queue_bytes=bound,
                      max_datagram_bytes=1432, connect_timeout=1, backoff_min=0.1,
                      backoff_max=1, dead_after=1)
    for batch in batches:
        backend.enqueue(batch)
        assert len(backend.buffer) <= bound
        assert backend.buffer.endswith(b"\n") or not backend.buffer  # whole lines only
    offered = sum(len(batch) for batch in batches)
    assert backend.queued_lines() + backend.counters["dropped_queue_full"] == offered
    assert backend.counters["enqueued_lines"] == backend.queued_lines()
