"""DogStatsD events and service checks: the examples of Datadog's datagram format decode to
the fields it documents, malformed ones are counted and cost only themselves, and each one
reaches the flush: the console/file record and its own Kafka message, valid against
docs/schemas/kafka-event.schema.json."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from forwarders.kafka.reading import read_topic
from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.events import parse_event_line
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import EVENT, SERVICE_CHECK, Event

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schemas" /
                     "kafka-event.schema.json").read_text())

# Datadog's documented examples (datagram format page), as the bytes on the wire.
EXCEPTION = (b"_e{21,36}:An exception occurred|Cannot parse CSV file from 10.0.0.17"
             b"|t:warning|#err_type:bad_file")
REDIS = b"_sc|Redis connection|2|#env:dev|m:Redis connection timed out after 10s"
EVERY_FIELD = (b"_e{5,9}:de|ay|line\\ntwo|d:1700000000|h:web-1|p:low|t:error|s:jenkins"
               b"|k:deploy-42|#team:core,canary")
CHECK_FIELDS = b"_sc|db.up|0|d:1700000001|h:db-1|#env:prod|m:all good|really"
MALFORMED = [b"_e{5,9}:title|text", b"_e{x,4}:titl|text", b"_e{5}:title",
             b"_e{3,2}:ab|cd", b"_e{2,2}:ab|cd|p:urgent", b"_e{2,2}:ab|cd|t:fatal",
             b"_e{2,2}:ab|cd|d:soon", b"_sc|db.up|5", b"_sc||0", b"_sc|db.up"]


def test_the_documented_examples_decode_to_their_fields() -> None:
    assert parse_event_line(EXCEPTION) == Event(
        EVENT, "An exception occurred", "Cannot parse CSV file from 10.0.0.17",
        (("err_type", "bad_file"),), alert_type="warning")
    assert parse_event_line(REDIS) == Event(
        SERVICE_CHECK, "Redis connection", "Redis connection timed out after 10s",
        (("env", "dev"),), status=2)
    # the lengths count bytes, so a title may hold '|'; \n in the text is a newline
    assert parse_event_line(EVERY_FIELD) == Event(
        EVENT, "de|ay", "line\ntwo", (("canary", ""), ("team", "core")), 1700000000.0,
        "web-1", "low", "error", "deploy-42", "jenkins")
    # the message is last and keeps its '|'
    assert parse_event_line(CHECK_FIELDS) == Event(
        SERVICE_CHECK, "db.up", "all good|really", (("env", "prod"),), 1700000001.0, "db-1",
        status=0)
    title = "Überlauf".encode()
    assert parse_event_line(b"_e{%d,1}:%s|x" % (len(title), title)).title == "Überlauf"


@pytest.mark.parametrize("line", MALFORMED)
def test_a_malformed_event_is_refused(line: bytes) -> None:
    with pytest.raises(DecodeError) as raised:
        parse_event_line(line)
    assert raised.value.reason == "bad_event"


def test_events_reach_the_snapshot_and_bad_ones_are_counted_beside_good_lines() -> None:
    config = build_config({"forwarders": {}, "agent": {"tags": {"dc": "eu1"}}})
    stats = SelfStats()
    manager = MetricMgr(config, stats)
    pipeline = Pipeline(config, manager, stats)
    pipeline.ingest(b"\n".join([EXCEPTION, b"hits:1|c", *MALFORMED, REDIS, b"hits:2|c"]))
    pipeline.ingest(b" " + CHECK_FIELDS)  # a payload the decoders take whole
    pipeline.publish_counts()
    table = manager.swap()
    series = manager.finish(table, 10.0)
    assert [(s.name, s.stats["count"]) for s in series] == [("hits", 3.0)]
    assert [(e.kind, e.title, dict(e.tags)["dc"]) for e in table.events] == [
        (EVENT, "An exception occurred", "eu1"), (SERVICE_CHECK, "Redis connection", "eu1"),
        (SERVICE_CHECK, "db.up", "eu1")]
    counts = stats.take()
    assert counts["rejected.bad_event"] == len(MALFORMED)
    assert counts["decoded.samples"] == 5  # two counter lines, three events


@pytest.mark.integration
def test_the_daemon_prints_events_and_sends_them_to_kafka(start_daemon: Any,
                                                           embedded_kafka: str) -> None:
    topic, events_topic = f"m-{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex[:8]}"
    daemon = start_daemon({"flush_interval": 3600, "shutdown_timeout": 5, "forwarders": {
        "console": {}, "kafka": {"kafka_broker": embedded_kafka, "kafka_topic": topic,
                                 "events_topic": events_topic, "format": "influx"}}})
    daemon.send_udp(b"\n".join([EXCEPTION, REDIS, MALFORMED[0]]), EVERY_FIELD)
    time.sleep(0.3)
    assert daemon.stop() == 0, "".join(daemon.stderr)
    printed = [r for r in daemon.records() if "kind" in r]
    messages = read_topic(embedded_kafka, events_topic)
    sent = [orjson.loads(m.value) for m in messages]
    for record in printed + sent:
        jsonschema.Draft202012Validator(SCHEMA).validate(record)
    assert sorted(r["title"] for r in printed) == sorted(r["title"] for r in sent) == [
        "An exception occurred", "Redis connection", "de|ay"]
    assert sorted(m.key for m in messages) == [b"event:An exception occurred",
                                               b"event:de|ay",
                                               b"service_check:Redis connection"]
    every = next(r for r in sent if r["title"] == "de|ay")
    assert (every["timestamp"], every["hostname"], every["priority"], every["alert_type"],
            every["source_type_name"], every["aggregation_key"], every["text"]) == (
        1700000000, "web-1", "low", "error", "jenkins", "deploy-42", "line\ntwo")
    bad = [r for r in daemon.records() if r.get("name") == "pystatsd.rejected.bad_event"]
    assert bad[0]["stats"]["count"] == 1
