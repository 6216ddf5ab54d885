"""The UDP listener's receive, native (a drain thread without the GIL and its ring,
pystatsd/_receive.pyx) and the Python loop it falls back to: the same contracts for both, and
what only the native one can do, keep draining while the GIL is held elsewhere."""

from __future__ import annotations

import ctypes
import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pystatsd import listeners
from pystatsd.config import build_config
from pystatsd.listeners import UdpListener
from pystatsd.selfstats import SelfStats

NATIVE_BUILT = listeners._RING_BUILT is not None
_NOT_BUILT = pytest.mark.skipif(not NATIVE_BUILT, reason="the native receive is not built")
RECEIVES = [pytest.param("native", marks=_NOT_BUILT),
            pytest.param("native-batch", marks=_NOT_BUILT), "python"]
"""``native-batch``: the native receive handing its batches to a ``deliver_batch`` (as the
daemon's listeners do), which delivers each payload as the tests' ``deliver`` would."""


def udp_spec(**keys: Any) -> dict[str, Any]:
    config = build_config({"forwarders": {}, "listeners": [
        {"protocol": "udp", "address": "127.0.0.1", "port": 0, **keys}]})
    spec: dict[str, Any] = config["listeners"][0]
    return spec


class Collected:
    """The deliveries, in order, from the listener's thread."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.arrived = threading.Condition()

    def __call__(self, payload: bytes) -> None:
        with self.arrived:
            self.payloads.append(payload)
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.payloads) >= count, timeout)


@pytest.fixture(params=RECEIVES)
def receive(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def make_listener(receive: str) -> Iterator[Any]:
    made: list[UdpListener] = []

    def make(deliver: Any, stats: SelfStats | None = None, **keys: Any) -> UdpListener:
        batches: list[int] = []

        def deliver_batch(payloads: list[bytes], failed: Any) -> None:
            batches.append(len(payloads))
            for payload in payloads:
                try:
                    deliver(payload)
                except Exception:
                    failed(payload)

        listener = UdpListener(udp_spec(**keys), deliver, stats or SelfStats(),
                               native=receive != "python",
                               deliver_batch=deliver_batch if receive == "native-batch"
                               else None)
        assert listener.receive == receive.split("-")[0]
        listener.batches = batches  # type: ignore[attr-defined]
        listener.start()
        made.append(listener)
        return listener

    yield make
    for listener in made:
        if listener._thread.is_alive():
            listener.stop()


def sender() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def test_stop_delivers_everything_sent_before_it_under_a_stream(make_listener: Any,
                                                                 receive: str) -> None:
    got = Collected()
    listener = make_listener(got)
    sent = 0
    streaming = True

    def stream() -> None:  # at most ~3,000 datagrams: the socket buffer holds them all
        nonlocal sent
        with sender() as out:
            while streaming and sent < 3000:
                out.sendto(b"stream.n:%d|c" % sent, listener.address)
                sent += 1
                if sent % 50 == 0:
                    time.sleep(0.001)

    thread = threading.Thread(target=stream)
    thread.start()
    while sent < 1000:
        time.sleep(0.001)
    before_stop = sent
    listener.stop()
    streaming = False
    thread.join()
    assert listener.kernel_drops == 0
    delivered = got.payloads
    assert len(delivered) >= before_stop
    # every datagram sent before the stop, in order, none twice, nothing after the last
    assert delivered == [b"stream.n:%d|c" % n for n in range(len(delivered))]
    assert listener.bytes_received == sum(len(p) for p in delivered)
    assert not listener._thread.is_alive()
    if receive == "native-batch":  # all of them through the batch entry
        assert sum(listener.batches) == len(delivered)


def test_a_datagram_longer_than_max_datagram_bytes_is_truncated_to_it(
        make_listener: Any) -> None:
    got = Collected()
    listener = make_listener(got, max_datagram_bytes=512)
    with sender() as out:
        out.sendto(b"a" * 2000, listener.address)
        out.sendto(b"b" * 512, listener.address)
        out.sendto(b"c:1|c", listener.address)
    got.wait_for(3)
    listener.stop()
    assert got.payloads == [b"a" * 512, b"b" * 512, b"c:1|c"]
    assert listener.bytes_received == 512 + 512 + 5


def test_the_probe_is_answered_and_delivers_nothing(make_listener: Any) -> None:
    got = Collected()
    listener = make_listener(got)
    listener.last_alive = 0.0
    listener.probe()
    deadline = time.monotonic() + 5
    while listener.last_alive == 0.0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert listener.last_alive > 0.0
    with sender() as out:
        out.sendto(b"after.probe:1|c", listener.address)
    got.wait_for(1)
    listener.stop()
    assert got.payloads == [b"after.probe:1|c"]


def test_a_payload_that_breaks_ingest_is_counted_and_the_next_is_delivered(
        make_listener: Any) -> None:
    got = Collected()
    stats = SelfStats()

    def deliver(payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("boom")
        got(payload)

    listener = make_listener(deliver, stats)
    with sender() as out:
        out.sendto(b"boom", listener.address)
        out.sendto(b"fine:1|c", listener.address)
    got.wait_for(1)
    listener.stop()
    assert got.payloads == [b"fine:1|c"]
    assert stats.counters["listener.udp.ingest_errors"] == 1


def hold_the_gil(seconds: float) -> None:
    """Sleep in C with the GIL held (ctypes.PyDLL keeps it), as ``fork()`` does while the
    kernel copies the page tables: no Python thread of this process runs meanwhile."""
    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))


SEND_PACED = textwrap.dedent("""
    import socket, sys, time
    host, port, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sys.stdin.readline()  # go
    start = time.monotonic()
    for n in range(count):
        out.sendto(b"held.n:%d|c" % n, (host, port))
        if n % 100 == 99:
            time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
""")


def send_while_the_gil_is_held(listener: UdpListener, count: int, rate: int,
                               hold: float) -> None:
    """``count`` datagrams from another process at ``rate``/s, most of them while this
    process holds its GIL for ``hold`` seconds."""
    host, port = listener.address
    with subprocess.Popen([sys.executable, "-c", SEND_PACED, host, str(port), str(count),
                           str(rate)], stdin=subprocess.PIPE) as paced:
        assert paced.stdin is not None
        paced.stdin.write(b"go\n")
        paced.stdin.flush()
        time.sleep(0.05)
        hold_the_gil(hold)
        assert paced.wait(30) == 0


# A small socket buffer (the kernel grants ~2x: ~2,000 of these datagrams at most) and more
# than ten times that sent while the GIL is held: only a receive that drains without the GIL
# keeps them; the ring (4 MiB) holds ~87,000.
SMALL_BUFFER = 1 << 20
HELD_DATAGRAMS = 24_000


@pytest.mark.integration  # a sender process
@pytest.mark.skipif(not NATIVE_BUILT, reason="the native receive is not built")
def test_the_native_receive_loses_nothing_while_the_gil_is_held_past_the_socket_buffer(
        ) -> None:
    got = Collected()
    listener = UdpListener(udp_spec(receive_buffer_bytes=SMALL_BUFFER), got, SelfStats(),
                           native=True)
    listener.start()
    send_while_the_gil_is_held(listener, HELD_DATAGRAMS, 20_000, hold=1.5)
    got.wait_for(HELD_DATAGRAMS)
    listener.stop()
    assert listener.kernel_drops == 0
    assert got.payloads == [b"held.n:%d|c" % n for n in range(HELD_DATAGRAMS)]


@pytest.mark.integration  # a sender process
def test_the_python_receive_counts_what_the_kernel_dropped_while_the_gil_was_held() -> None:
    """The fallback cannot drain while the GIL is held: the kernel drops past its buffer, and
    every datagram is either delivered or counted; it keeps receiving after."""
    got = Collected()
    listener = UdpListener(udp_spec(receive_buffer_bytes=SMALL_BUFFER), got, SelfStats(),
                           native=False)
    listener.start()
    send_while_the_gil_is_held(listener, HELD_DATAGRAMS, 20_000, hold=1.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the buffer is drained: all are accounted for
        listener.report_kernel_drops()
        if len(got.payloads) + listener.kernel_drops >= HELD_DATAGRAMS:
            break
        time.sleep(0.01)
    assert listener.kernel_drops > 0
    assert len(got.payloads) + listener.kernel_drops == HELD_DATAGRAMS
    with sender() as out:
        out.sendto(b"after:1|c", listener.address)
    got.wait_for(len(got.payloads) + 1)
    listener.stop()
    assert got.payloads[-1] == b"after:1|c"


@pytest.mark.skipif(not NATIVE_BUILT, reason="the native receive is not built")
def test_a_fork_while_receiving_leaves_a_working_child_and_a_parent_that_lost_nothing(
        ) -> None:
    """The ring and the drain thread's stack are not in the child (MADV_DONTFORK): a child
    that walks its heap and exits, as the snapshot child does, is unharmed, and the parent
    receives on."""
    got = Collected()
    listener = UdpListener(udp_spec(), got, SelfStats(), native=True)
    listener.start()
    assert listener._ring.shielded
    with sender() as out:
        for n in range(2000):
            out.sendto(b"fork.n:%d|c" % n, listener.address)
            if n % 400 == 0:
                pid = os.fork()
                if pid == 0:  # the child: collect everything, then leave as the snapshot does
                    gc.collect()
                    os._exit(0 if len(got.payloads) >= 0 else 1)
                assert os.waitpid(pid, 0)[1] == 0
    got.wait_for(2000)
    listener.stop()
    assert got.payloads == [b"fork.n:%d|c" % n for n in range(2000)]


def test_an_unknown_receive_choice_refuses_to_start() -> None:
    env = {**os.environ, listeners.UDP_RECEIVE_ENV: "fast"}
    result = subprocess.run([sys.executable, "-c", "import pystatsd.listeners"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "PYSTATSD_UDP_RECEIVE='fast': expected python, native or auto" in result.stderr


def version_with(value: str | None) -> str:
    env = {key: val for key, val in os.environ.items() if key != listeners.UDP_RECEIVE_ENV}
    if value is not None:
        env[listeners.UDP_RECEIVE_ENV] = value
    return subprocess.run([sys.executable, "-m", "pystatsd", "--version"], env=env,
                          capture_output=True, text=True, check=True).stdout


def test_version_says_which_receive_runs_and_the_environment_chooses_the_python_one() -> None:
    assert "; udp receive: python (PYSTATSD_UDP_RECEIVE=python);" in version_with("python")
    expected = "native" if NATIVE_BUILT else "python (the native receive does not import"
    assert f"; udp receive: {expected}" in version_with(None)
