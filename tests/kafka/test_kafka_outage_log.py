"""A Kafka outage is in the daemon's log: when it began (within the documented time), when the
broker acknowledged again and how much was held, and when what was held had been delivered;
``pystatsd --status`` meanwhile says where every message is (delivered, in flight, spooled)."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict

import orjson
import pytest
from kafka_helpers import status, wait_status

from forwarders.kafka.outage import OUTAGE_AFTER
from forwarders.kafka.reading import read_topic

pytestmark = pytest.mark.integration

SLACK = 2.0
"""Seconds a loaded machine may add to OUTAGE_AFTER (the pump polls every 50 ms)."""


def wait_line(daemon, pattern: str, timeout: float) -> re.Match[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in list(daemon.stderr):
            found = re.search(pattern, line)
            if found:
                return found
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} not logged within {timeout} s:\n{''.join(daemon.stderr)}")


def test_an_outage_is_logged_when_it_begins_when_it_ends_and_with_what_was_held(
        start_daemon, proxied_broker, topic):
    broker, proxy = proxied_broker
    daemon = start_daemon({"flush_interval": 1, "shutdown_timeout": 5, "forwarders": {"kafka": {
        "kafka_broker": broker.bootstrap, "kafka_topic": topic, "format": "json",
        "memory_queue_messages": 40, "linger_ms": 5}}})
    sent: dict[str, int] = defaultdict(int)
    stop = threading.Event()

    def steady_load() -> None:  # 30 series, every 0.2 s
        while not stop.is_set():
            daemon.send_udp(b"\n".join(f"log.c{i}:1|c".encode() for i in range(30)))
            for i in range(30):
                sent[f"log.c{i}"] += 1
            time.sleep(0.2)

    loader = threading.Thread(target=steady_load)
    loader.start()
    try:
        wait_status(daemon, lambda s: s["delivered"] > 0)
        proxy.cut()
        cut_at = time.monotonic()
        begun = wait_line(daemon, r"kafka outage: no message acknowledged for ([\d.]+) s",
                          OUTAGE_AFTER + SLACK + 1.0)
        took = time.monotonic() - cut_at
        assert took <= OUTAGE_AFTER + SLACK, f"outage logged {took:.1f} s after the cut"
        assert float(begun.group(1)) >= OUTAGE_AFTER
        # the fields read right: what was handed on is delivered, in flight or spooled
        held = wait_status(daemon, lambda s: s["spooled_now"] > 0 and
                           s["sent"] == s["delivered"] + s["in_flight"] + s["spooled_now"])
        assert held["outages"] == 1 and held["in_flight"] <= 40
        time.sleep(3)
        proxy.restore()
        back = wait_line(daemon, r"kafka acknowledges again after ([\d.]+) s; (\d+) messages "
                         r"held \((\d+) in memory, (\d+) spooled\)", 20)
        assert float(back.group(1)) >= OUTAGE_AFTER
        assert int(back.group(2)) == int(back.group(3)) + int(back.group(4)) > held["spooled_now"]
        over = wait_line(daemon, r"kafka outage over after ([\d.]+) s: the (\d+) messages held "
                         r"are delivered", 30)
        assert int(over.group(2)) >= int(back.group(2))
    finally:
        stop.set()
        loader.join()
    after = wait_status(daemon, lambda s: s["spooled_now"] == s["in_flight"] == 0)
    assert after["outages"] == 1 and after["spool_dropped"] == after["spool_io_lost"] == 0
    assert status(daemon)["delivered"] >= after["delivered"]
    assert daemon.stop() == 0
    assert "everything received was flushed and delivered" in "".join(daemon.stderr)
    assert len(re.findall("kafka outage:", "".join(daemon.stderr))) == 1

    received: dict[str, float] = defaultdict(float)
    for message in read_topic(broker.bootstrap, topic, timeout=20):
        record = orjson.loads(message.value)
        if record["name"].startswith("log."):
            received[record["name"]] += record["stats"]["count"]
    assert received == sent  # held through the outage, then delivered once
