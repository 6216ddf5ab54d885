"""A reload of a changed Kafka section during a broker outage, on the daemon: the old instance
is closed first (what it holds goes to the front of its spool, its lock is released), the new
one opens that spool and sends it before its own; after recovery every interval's record is in
the topic once, in order."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml
from kafka_helpers import wait_for

from forwarders.kafka.reading import read_topic
from pystatsd.config import load_config
from pystatsd.daemon import Daemon
from tests.conftest import free_port

pytestmark = pytest.mark.integration

KEYS = 30


def write_config(path: Path, broker: str, topic: str, linger_ms: int) -> None:
    path.write_text(yaml.safe_dump({
        "bind_port": free_port(), "state_dir": str(path.parent / "state"),
        "flush_interval": 3600, "self_metrics": {"enabled": False},
        # The reload closes the old instance by this deadline; in the outage it spools what
        # it holds only then (the default 10 s would be 10 s of waiting on a cut broker).
        "shutdown_timeout": 2,
        "forwarders": {"kafka": {"kafka_broker": broker, "kafka_topic": topic,
                                 "format": "json", "linger_ms": linger_ms,
                                 "memory_queue_messages": 10}}}))


def test_a_reload_during_an_outage_hands_the_spool_over_and_loses_nothing(
        proxied_broker, topic, tmp_path):
    broker, proxy = proxied_broker
    path = tmp_path / "pystatsd.conf"
    write_config(path, broker.bootstrap, topic, 5)
    daemon = Daemon(load_config(path), str(path))
    daemon.start()
    try:
        proxy.cut()

        def interval(count: int) -> None:
            for i in range(KEYS):
                daemon._deliver(b"spool_reload.c%d:%d|c" % (i, count))
            daemon.flush()

        interval(1)
        old = daemon.forwarders["kafka"]
        assert wait_for(lambda: old.counters["spooled"] >= KEYS - 10, 10), old.stats()
        document = yaml.safe_load(path.read_text())
        document["forwarders"]["kafka"]["linger_ms"] = 7  # the one change: a new instance
        path.write_text(yaml.safe_dump(document))
        assert daemon.reload()
        new = daemon.forwarders["kafka"]
        assert new is not old and new.config["linger_ms"] == 7
        interval(2)
        proxy.restore()
        assert wait_for(lambda: new.counters["delivered"] == 2 * KEYS, 30), new.stats()
    finally:
        assert daemon.stop() == 0
    records: dict[bytes, list[tuple[int, float]]] = {}
    for message in read_topic(broker.bootstrap, topic):
        records.setdefault(message.key, []).append(
            (message.offset, orjson.loads(message.value)["stats"]["count"]))
    assert len(records) == KEYS
    for seen in records.values():
        assert [count for _, count in sorted(seen)] == [1.0, 2.0]  # once each, in order
