"""pystatsd.wire_formats: TCP streams of each format cut into whole units, wherever the
chunks break, and what relays of each input get."""

from __future__ import annotations

import pickle
import struct

import pytest
from statsite_wire import COUNTER, TIMER, frame

from forwarders.carbon_routes import CarbonRoutesForwarder
from forwarders.statsd_relay import StatsdRelayForwarder
from forwarders.statsite_proxy import StatsiteProxyForwarder
from pystatsd.selfstats import SelfStats
from pystatsd.wire_formats import decode, make_framer, relay_accepts, relay_items


def cut_everywhere(fmt: str, stream: bytes) -> list[list[bytes]]:
    """The relay items of ``stream`` fed in chunks of 1, 3 and all bytes."""
    results = []
    for size in (1, 3, len(stream)):
        framer = make_framer(fmt, 1000, SelfStats())
        payloads = []
        for at in range(0, len(stream), size):
            payloads += framer.feed(stream[at:at + size])
        payloads += framer.finish()
        results.append([item for payload in payloads for item in relay_items(fmt, payload)])
    return results


def test_graphite_lines_survive_any_chunking() -> None:
    stream = b"a 1 1700000000\nb;k=v 2 1700000001\nc 3 1700000002"  # no final newline
    for items in cut_everywhere("graphite", stream):
        assert items == [b"a 1 1700000000", b"b;k=v 2 1700000001", b"c 3 1700000002"]


def test_statsite_commands_survive_any_chunking() -> None:
    binary = frame(TIMER, "t", struct.unpack("<d", b"\n" * 8)[0])  # a newline inside
    stream = b"x:1|c\n" + binary + frame(COUNTER, "y", 2) + b"z:3|g\n"
    for items in cut_everywhere("statsite", stream):
        assert items == [b"x:1|c", binary, frame(COUNTER, "y", 2), b"z:3|g"]


def test_pickle_frames_become_plaintext_lines_with_their_timestamps() -> None:
    body = pickle.dumps([("p.a;dc=eu", (1700000000, 1.5)), ("p.b", (1700000000.25, 2))])
    stream = struct.pack(">I", len(body)) + body
    for items in cut_everywhere("graphite_pickle", stream):
        assert items == [b"p.a;dc=eu 1.5 1700000000", b"p.b 2.0 1700000000.25"]


def test_an_over_long_graphite_line_is_refused_and_the_next_kept() -> None:
    stats = SelfStats()
    framer = make_framer("graphite", 20, stats)
    payloads = framer.feed(b"x" * 30) + framer.feed(b"y" * 30 + b"\nok 1 2\n") + framer.finish()
    assert payloads == [b"ok 1 2"]
    assert stats.counters["rejected.too_long"] == 1
    assert [s.name for s in decode("graphite", payloads[0], stats)] == ["ok"]


@pytest.mark.parametrize(("relay", "takes"), [
    (CarbonRoutesForwarder, {"graphite", "graphite_pickle"}),
    (StatsiteProxyForwarder, {"statsite"}),
    (StatsdRelayForwarder, {"statsd"})])
def test_each_relay_takes_only_its_input(relay: type, takes: set[str]) -> None:
    formats = {"statsd", "graphite", "graphite_pickle", "statsite"}
    assert {fmt for fmt in formats if relay_accepts(relay, fmt)} == takes
