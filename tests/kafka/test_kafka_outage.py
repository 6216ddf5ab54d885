"""Broker outages: nothing lost, nothing duplicated, order kept; a forwarder closed during an
outage spools and the next one sends the spool; only a full spool drops, and counts it.

The broker is made unreachable by cutting a TCP proxy that stands between producer and broker
(see tcp_proxy.py), not by stopping Tansu: Tansu keeps topics in memory only, so a restarted
Tansu would have lost everything delivered before the outage and nothing could be counted."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import orjson
import pytest
from kafka_helpers import snapshot, wait_for

from forwarders.kafka.reading import read_topic
from pystatsd.snapshot import SeriesStats

pytestmark = pytest.mark.integration

START = 1_700_000_000.0
# Long enough for the outage watch (OUTAGE_AFTER, 5 s) to call it one and for several of the
# producer's reconnect attempts (backoff capped at 2 s) to be refused; at 500 messages a second
# against a 300-message memory queue, about 4,000 messages (1 MB) go through the spool. It was
# 30 s: the spool's 4 MiB segments did not roll over then either, so nothing more was tested.
OUTAGE = 8.0


def counters(count: float, keys: int = 50) -> list[SeriesStats]:
    return [SeriesStats("outage.c", "counter", (("n", str(i)),), {"count": count, "rate": 1.0})
            for i in range(keys)]


def by_key(messages) -> dict[bytes, list[tuple[int, dict]]]:
    grouped: dict[bytes, list[tuple[int, dict]]] = defaultdict(list)
    for message in messages:
        grouped[message.key].append((message.offset, orjson.loads(message.value)))
    return grouped


def test_an_outage_under_steady_load_loses_and_duplicates_nothing(
        proxied_broker, make_forwarder, topic):
    broker, proxy = proxied_broker
    forwarder = make_forwarder({
        "kafka_broker": broker.bootstrap, "kafka_topic": topic, "format": "json",
        "memory_queue_messages": 300,  # small, so the outage spills to the disk spool
        "linger_ms": 5,
    })
    sent: dict[bytes, float] = defaultdict(float)
    refused = []
    stop = threading.Event()

    def steady_load() -> None:  # 10 flushes of 50 series a second
        flush = 0
        while not stop.is_set():
            count = float(flush % 7 + 1)
            if forwarder.submit(snapshot(START + flush, counters(count), interval=1.0)):
                for i in range(50):
                    sent[f"outage.c,n={i}".encode()] += count
            else:
                refused.append(flush)
            flush += 1
            time.sleep(0.1)

    loader = threading.Thread(target=steady_load)
    loader.start()
    try:
        # A second's load delivered before the cut (it was a 3 s sleep).
        assert wait_for(lambda: forwarder.counters["delivered"] >= 500, 30), forwarder.stats()
        proxy.cut()
        time.sleep(OUTAGE)
        assert forwarder.counters["spooled"] > 0, "the outage never reached the spool"
        in_memory = forwarder.stats()["in_flight"]
        assert 0 < in_memory <= 300
        proxy.restore()
        # The load goes on while the spool drains, and for a second after (it was a 4 s
        # sleep): what is submitted behind the spool and after it is in the checks below.
        assert wait_for(lambda: forwarder.stats()["spooled_now"] == 0, 30), forwarder.stats()
        time.sleep(1)
    finally:
        stop.set()
        loader.join()
    assert refused == []  # receiving never waited on Kafka
    total = forwarder.counters["submitted"]  # series submitted = messages to deliver
    assert wait_for(lambda: forwarder.counters["delivered"] == total, 30), forwarder.stats()
    assert forwarder.close(10) == 0
    assert forwarder.counters["spool_dropped"] == forwarder.counters["failed"] == 0

    received = by_key(read_topic(broker.bootstrap, topic, timeout=20))
    assert set(received) == set(sent)
    for key, seen in received.items():
        starts = [record["interval_start"] for _, record in sorted(seen)]
        assert len(starts) == len(set(starts)), f"duplicates for {key!r}"
        assert starts == sorted(starts), f"out of order for {key!r}"
        assert sum(record["stats"]["count"] for _, record in seen) == sent[key]


def test_closed_during_an_outage_it_spools_and_the_next_start_sends_the_spool(
        proxied_broker, make_forwarder, topic, tmp_path):
    broker, proxy = proxied_broker
    proxy.cut()
    section = {"kafka_broker": broker.bootstrap, "kafka_topic": topic, "format": "json"}
    first = make_forwarder(section)
    for flush in range(3):
        assert first.submit(snapshot(START + 10 * flush, counters(flush + 1.0, keys=20)))
    assert wait_for(lambda: first.stats()["in_flight"] == 60, 5)
    assert first.close(3) == 0  # nothing lost: all of it spooled
    assert first.counters["delivered"] == 0 and first.counters["spooled"] == 60
    assert list((tmp_path / "spool" / "kafka").glob("*.seg"))

    proxy.restore()
    second = make_forwarder(section)
    assert wait_for(lambda: second.counters["delivered"] == 60, 20), second.stats()
    assert second.close(5) == 0
    assert list((tmp_path / "spool" / "kafka").glob("*.seg")) == []

    received = by_key(read_topic(broker.bootstrap, topic))
    assert len(received) == 20
    for seen in received.values():
        assert [r["stats"]["count"] for _, r in sorted(seen)] == [1.0, 2.0, 3.0]


def test_a_full_spool_drops_and_counts_what_it_drops(proxied_broker, make_forwarder, topic,
                                                      tmp_path):
    broker, proxy = proxied_broker
    proxy.cut()
    one_record = 230  # about one json message with its spool header, in bytes
    section = {"kafka_broker": broker.bootstrap, "kafka_topic": topic, "format": "json",
               "memory_queue_messages": 10, "spool_max_bytes": 20 * one_record}
    first = make_forwarder(section)
    assert first.submit(snapshot(START, counters(1.0, keys=100)))
    assert wait_for(lambda: first.counters["spooled"] + first.counters["spool_dropped"] == 90, 5)
    assert 0 < first.counters["spooled"] < 90
    # the 10 held in memory go to the front of the spool at shutdown; it is full: all dropped,
    # and close reports every message the full spool cost, not only those
    dropped = first.close(2)
    assert dropped == first.counters["spool_dropped"] == 100 - first.counters["spooled"]
    assert dropped > 10

    proxy.restore()
    second = make_forwarder(section)
    spooled = first.counters["spooled"]
    assert wait_for(lambda: second.counters["delivered"] == spooled, 20), second.stats()
    assert second.close(5) == 0
    messages = read_topic(broker.bootstrap, topic)
    assert len(messages) == len({m.key for m in messages}) == spooled == 100 - dropped


def test_messages_past_their_delivery_timeout_go_back_to_the_spool_and_are_sent_later(
        proxied_broker, make_forwarder, topic):
    broker, proxy = proxied_broker
    forwarder = make_forwarder({"kafka_broker": broker.bootstrap, "kafka_topic": topic,
                                "format": "json", "delivery_timeout": 1.5})
    assert forwarder.submit(snapshot(START, counters(1.0, keys=10)))
    assert wait_for(lambda: forwarder.counters["delivered"] == 10, 10)  # connected, topic known
    proxy.cut()
    assert forwarder.submit(snapshot(START + 10, counters(2.0, keys=10)))
    assert wait_for(lambda: forwarder.counters["retried"] == 10, 10), forwarder.stats()
    # counted in the delivery report; moved to the spool by the pump right after
    assert wait_for(lambda: forwarder.counters["spooled"] == 10, 2), forwarder.stats()
    proxy.restore()
    assert wait_for(lambda: forwarder.counters["delivered"] == 20, 20), forwarder.stats()
    assert forwarder.close(5) == 0
    received = by_key(read_topic(broker.bootstrap, topic))
    assert len(received) == 10
    for seen in received.values():
        assert [r["stats"]["count"] for _, r in sorted(seen)] == [1.0, 2.0]


def test_a_reload_hands_the_spool_from_the_old_instance_to_the_new(proxied_broker,
                                                                   make_forwarder, topic):
    """A changed Kafka section is rebuilt the way the daemon's reload does it: the old instance
    is closed first (what it holds goes to the front of its spool), then the new one opens that
    spool and sends it first, once. Two instances never hold one spool at the same time."""
    from forwarders.kafka import KafkaConfigError

    broker, proxy = proxied_broker
    proxy.cut()
    section = {"kafka_broker": broker.bootstrap, "kafka_topic": topic, "format": "json",
               "memory_queue_messages": 20}
    old = make_forwarder(section)
    assert old.submit(snapshot(START, counters(1.0, keys=30)))  # 20 in memory, 10 spooled
    assert wait_for(lambda: old.counters["spooled"] == 10, 5)
    overlapping = make_forwarder(section, start=False)
    with pytest.raises(KafkaConfigError, match="spool_dir: spool .* is in use"):
        overlapping.start()
    overlapping.close(0)
    assert old.close(1) == 0  # its 20 in-memory messages go to the front of the spool
    new = make_forwarder({**section, "linger_ms": 5})  # the reloaded, changed section
    assert new.submit(snapshot(START + 10, counters(2.0, keys=30)))
    assert wait_for(lambda: new.counters["spooled"] == 30, 5)  # queued behind the spool
    proxy.restore()
    assert wait_for(lambda: new.counters["delivered"] == 60, 20), new.stats()
    assert new.close(5) == 0
    received = by_key(read_topic(broker.bootstrap, topic))
    assert len(received) == 30
    for seen in received.values():
        assert [r["stats"]["count"] for _, r in sorted(seen)] == [1.0, 2.0]
