"""The spool under faults, through the real daemon: a spool directory that stops being usable in
the middle of an outage never makes the daemon send anything twice, its errors are counted and
shown by ``pystatsd --status``, the last line says what was lost; every message carries an
idempotence id that stays the same however often it is delivered."""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter

import orjson
import pytest
from kafka_helpers import snapshot, wait_for, wait_status

from forwarders.kafka.reading import read_topic
from pystatsd.snapshot import SeriesStats

pytestmark = pytest.mark.integration

ID = "pystatsd-id"


def counters(prefix: str, count: int) -> list[bytes]:
    lines = [f"{prefix}.c{i}:1|c".encode() for i in range(count)]
    return [b"\n".join(lines[i:i + 20]) for i in range(0, count, 20)]


def test_an_unusable_spool_directory_mid_outage_never_sends_anything_twice(
        start_daemon, proxied_broker, topic, tmp_path):
    broker, proxy = proxied_broker
    config = {"flush_interval": 1, "shutdown_timeout": 5, "forwarders": {"kafka": {
        "kafka_broker": broker.bootstrap, "kafka_topic": topic, "format": "json",
        "memory_queue_messages": 50, "linger_ms": 5}}}
    spool_dir = tmp_path / "state" / "spool" / "kafka"
    proxy.cut()

    # 1. An outage: what the first daemon got is spooled at its stop.
    first = start_daemon(config)
    first.send_udp(*counters("before", 200))
    time.sleep(1.5)  # a flush at least
    assert first.stop() == 0
    assert len(list(spool_dir.glob("*.seg"))) >= 2

    # 2. Still in the outage, the next daemon starts sending its spool...
    second = start_daemon(config)
    wait_status(second, lambda s: s["in_flight"] > 0 and s["spooled_now"] > 0)
    # ... and the spool directory becomes unusable (as root a chmod would not stop us).
    moved = spool_dir.with_name("kafka.moved")
    spool_dir.rename(moved)
    spool_dir.write_text("not a directory")
    proxy.restore()
    # The segment being sent is finished, marked sent, and cannot be removed; the others
    # cannot be opened and wait on disk. (A flush meanwhile queues behind the spool, and cannot
    # be written to it: its self-metrics are lost, and counted.)
    after = wait_status(second, lambda s: s["in_flight"] == s["spooled_now"] == 0, timeout=30)
    assert after["spool_io_errors"] >= 2 and after["delivered"] > 0
    assert after["pump_errors"] == 0
    # A second outage: what does not fit in memory cannot be spooled: lost, and counted.
    proxy.cut()
    second.send_udp(*counters("during", 100))
    during = wait_status(second, lambda s: s["spool_io_lost"] >= after["spool_io_lost"] + 50)
    second.wait_for_log("messages lost")  # the spool's error line
    assert second.stop() == 0
    log = "".join(second.stderr)
    assert "everything received was flushed and delivered" not in log
    undelivered = re.search(r"stopped; undelivered: kafka (\d+)", log)
    # what was lost before the stop, and what was still in memory at it
    assert undelivered and int(undelivered.group(1)) >= during["spool_io_lost"] + 50, log
    proxy.restore()

    # 3. The operator puts the directory back; the next start sends only what was never sent.
    spool_dir.unlink()
    moved.rename(spool_dir)
    third = start_daemon(config)
    wait_status(third, lambda s: s["spooled_now"] == s["in_flight"] == 0 and s["delivered"] > 0)
    assert third.stop() == 0
    assert "everything received was flushed and delivered" in "".join(third.stderr)
    assert list(spool_dir.glob("*.seg")) == []

    messages = read_topic(broker.bootstrap, topic, timeout=20)
    ids = Counter(m.header(ID) for m in messages)
    assert None not in ids and ids.most_common(1)[0][1] == 1, "a message was sent twice"
    per_series = Counter((m.key, orjson.loads(m.value)["interval_start"],
                          orjson.loads(m.value)["interval"]) for m in messages)
    assert per_series.most_common(1)[0][1] == 1
    before = {m.key: orjson.loads(m.value)["stats"]["count"] for m in messages
              if m.key.startswith(b"before.")}
    assert before == {f"before.c{i}".encode(): 1 for i in range(200)}  # each exactly once
    assert not [m for m in messages if m.key.startswith(b"during.")]  # lost, and said so


def test_a_message_delivered_twice_carries_the_same_id_both_times(
        proxied_broker, make_forwarder, topic, tmp_path):
    broker, proxy = proxied_broker
    series = [SeriesStats("id.c", "counter", (("n", str(i)),), {"count": 1.0, "rate": 0.1})
              for i in range(10)]
    flush = snapshot(1_700_000_000.0, series)
    section = {"type": "kafka", "kafka_broker": broker.bootstrap, "kafka_topic": topic,
               "format": "json"}
    proxy.cut()
    spooler = make_forwarder(section, name="kafka")
    assert spooler.submit(flush)
    assert spooler.close(2) == 0 and spooler.counters["spooled"] == 10
    # A copy of the spool, as a restored backup would replay it, and the same flush sent live.
    shutil.copytree(tmp_path / "spool" / "kafka", tmp_path / "spool" / "replay",
                    ignore=shutil.ignore_patterns(".lock"))
    proxy.restore()
    for name in ("kafka", "replay"):
        replayer = make_forwarder(section, name=name)
        assert wait_for(lambda f=replayer: f.counters["delivered"] == 10, 20), replayer.stats()
        assert replayer.close(5) == 0
    live = make_forwarder(section, name="live")
    assert live.submit(flush)
    assert live.close(10) == 0 and live.counters["delivered"] == 10

    messages = read_topic(broker.bootstrap, topic)
    assert len(messages) == 30
    ids_by_key: dict[bytes, set[bytes | None]] = {}
    for message in messages:
        ids_by_key.setdefault(message.key or b"", set()).add(message.header(ID))
    assert all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
    distinct = {next(iter(ids)) for ids in ids_by_key.values()}
    assert len(distinct) == 10
    assert all(value and re.fullmatch(rb"[0-9a-f]{32}", value) for value in distinct)
