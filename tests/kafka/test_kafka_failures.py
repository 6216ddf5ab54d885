"""Failure paths: an unresolvable broker, a refused login, a message too large, and debug_mode.
Each gives one clear log line and a counted error, never a crash, and loses no other data."""

from __future__ import annotations

import logging
import time

import pytest
from kafka_helpers import snapshot, wait_for

from forwarders.kafka.embedded_broker import EmbeddedBroker
from forwarders.kafka.reading import read_topic
from pystatsd.snapshot import SeriesStats

START = 1_700_000_000.0
LOGGER = "pystatsd.forwarders.kafka"


def gauges(count: int) -> list[SeriesStats]:
    return [SeriesStats("fail.g", "gauge", (("n", str(i)),), {"value": float(i)})
            for i in range(count)]


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.ERROR]


@pytest.mark.slow  # waits out a timeout by design: out of the fast loop
def test_unresolvable_broker_logs_once_counts_and_spools(make_forwarder, topic, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    forwarder = make_forwarder({"kafka_broker": "no-such-broker.invalid:9092",
                                "kafka_topic": topic})
    for flush in range(3):
        assert forwarder.submit(snapshot(START + flush, gauges(5)))
    assert wait_for(lambda: forwarder.counters["broker_errors"] >= 2, 10)
    time.sleep(1.5)  # librdkafka keeps retrying; the log must not
    lines = error_lines(caplog)
    assert len(lines) == 1, lines
    assert "cannot resolve" in lines[0] and "no-such-broker.invalid" in lines[0]
    assert forwarder.close(2) == 0
    assert forwarder.counters["spooled"] == 15  # kept for the next start, not lost


@pytest.mark.integration
def test_refused_authentication_logs_once_counts_and_spools(make_forwarder, topic, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with EmbeddedBroker(authentication=True) as broker:
        forwarder = make_forwarder({
            "kafka_broker": broker.bootstrap, "kafka_topic": topic,
            "security_protocol": "sasl_plaintext", "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": "metrics", "sasl_password": "wrong",
        })
        assert forwarder.submit(snapshot(START, gauges(4)))
        assert wait_for(lambda: forwarder.counters["broker_errors"] >= 3, 10)
        lines = error_lines(caplog)
        assert len(lines) == 1, lines
        assert "authentication failed" in lines[0]
        assert forwarder.close(2) == 0
        assert forwarder.counters["spooled"] == 4 and forwarder.counters["delivered"] == 0


@pytest.mark.integration
def test_a_message_too_large_is_dropped_and_counted_and_the_rest_delivered(
        make_forwarder, kafka_bootstrap, topic, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    forwarder = make_forwarder({"kafka_broker": kafka_bootstrap, "kafka_topic": topic,
                                "producer": {"message.max.bytes": 2000}})
    huge = [SeriesStats("fail.big", "gauge", (("blob", "x" * 5000),), {"value": 1.0})] * 2
    assert forwarder.submit(snapshot(START, [*gauges(2), *huge, *gauges(5)[2:]]))
    assert forwarder.close(10) == 0
    assert forwarder.counters["failed"] == 2
    assert forwarder.counters["delivered"] == 5
    lines = error_lines(caplog)
    assert len(lines) == 1 and "fail.big" not in lines[0] and "too large" in lines[0].lower()
    assert sorted(m.key for m in read_topic(kafka_bootstrap, topic)) == \
        [f"fail.g,n={i}".encode() for i in range(5)]


def test_debug_mode_logs_the_real_messages_and_connects_nowhere(tmp_path, topic, caplog):
    from kafka_helpers import forwarder_config

    from forwarders.base import ForwarderContext
    from forwarders.kafka import KafkaForwarder

    caplog.set_level(logging.INFO, logger=LOGGER)
    forwarder = KafkaForwarder("kafka", forwarder_config({"kafka_topic": topic + ".{type}"}),
                               ForwarderContext(debug_mode=True, state_dir=tmp_path))
    forwarder.start()
    assert forwarder.submit(snapshot(START, gauges(1)))
    assert forwarder.close(2) == 0
    logged = [r.getMessage() for r in caplog.records if "debug_mode" in r.getMessage()]
    assert logged == [
        f"debug_mode, not sent: topic={topic}.gauge key=fail.g,n=0 value="
        '{"name":"fail.g","value":0,"apikey":"","tenant_id":"","@version":"1",'
        '"@timestamp":"2023-11-14T22:13:20.000Z","n":"0"}'
    ]
    assert not (tmp_path / "spool").exists()
