"""Reload keeps every forwarder whose section did not change: the Kafka producer is the same
instance, makes no new connection and its spool is not reopened; a changed section is rebuilt,
and only that one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kafka_helpers import wait_for

from pystatsd.config import load_config
from pystatsd.daemon import Daemon
from tests.conftest import free_port


def write_config(path: Path, kafka: dict[str, Any], console: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump({
        "bind_port": free_port(), "state_dir": str(path.parent / "state"),
        "flush_interval": 3600, "self_metrics": {"enabled": False},
        "forwarders": {"console": console, "kafka": kafka},
    }))


def test_reload_rebuilds_only_the_changed_sections(proxied_broker, topic, tmp_path, capfd):
    broker, proxy = proxied_broker
    path = tmp_path / "pystatsd.conf"
    kafka_section = {"kafka_broker": broker.bootstrap, "kafka_topic": topic, "format": "json",
                     "linger_ms": 5}
    write_config(path, kafka_section, {})
    daemon = Daemon(load_config(path), str(path))
    daemon.start()
    try:
        kafka, console = daemon.forwarders["kafka"], daemon.forwarders["console"]
        producer, spool = kafka._producer, kafka._spool

        def flush_and_deliver(forwarder: Any) -> None:
            before = forwarder.counters["delivered"]
            daemon._deliver(b"reload.hits:1|c")
            daemon.flush()
            assert wait_for(lambda: forwarder.counters["delivered"] > before, 20)

        flush_and_deliver(kafka)
        connections = proxy.accepted
        assert connections > 0

        # the file re-read as it is: nothing is rebuilt, nothing reconnects
        assert daemon.reload()
        assert daemon.forwarders["kafka"] is kafka and daemon.forwarders["console"] is console
        assert kafka._producer is producer and kafka._spool is spool
        flush_and_deliver(kafka)
        assert proxy.accepted == connections

        # only the console section changes: Kafka is untouched
        write_config(path, kafka_section, {"stream": "stderr"})
        assert daemon.reload()
        assert daemon.forwarders["kafka"] is kafka and kafka._producer is producer
        rebuilt_console = daemon.forwarders["console"]
        assert rebuilt_console is not console
        assert rebuilt_console.config["stream"] == "stderr"
        flush_and_deliver(kafka)
        assert proxy.accepted == connections
        assert "reload.hits" in capfd.readouterr().err  # the new console prints there

        # the Kafka section changes: it alone is rebuilt, after the old one let its spool go
        write_config(path, {**kafka_section, "linger_ms": 7}, {"stream": "stderr"})
        assert daemon.reload()
        rebuilt_kafka = daemon.forwarders["kafka"]
        assert rebuilt_kafka is not kafka and daemon.forwarders["console"] is rebuilt_console
        assert kafka._spool is None and kafka._producer is not None  # closed, released
        assert rebuilt_kafka.config["linger_ms"] == 7
        flush_and_deliver(rebuilt_kafka)
    finally:
        assert daemon.stop() == 0
