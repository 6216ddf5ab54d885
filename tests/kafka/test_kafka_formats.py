"""Snapshots handed to the Kafka forwarder come back from a real broker as exactly the expected
messages, in each format, keyed by series, one series always on one partition."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import jsonschema
import orjson
import pytest
from kafka_helpers import java_partition, snapshot

from forwarders.kafka.reading import read_topic
from pystatsd.snapshot import SeriesStats

pytestmark = pytest.mark.integration

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
TIMER_STATS = {"count": 4.0, "sum": 10.0, "min": 1.0, "max": 4.0, "mean": 2.5, "median": 2.5,
               "stddev": 1.25, "p50": 2.0, "p90": 4.0, "p99": 4.0}
SERIES = [
    SeriesStats("app.requests", "counter", (("env", "prod"), ("name", "shadow")),
                {"count": 30.0, "rate": 3.0}),
    SeriesStats("app.temp", "gauge", (("room", "a b"),), {"value": 21.5}),
    SeriesStats("app.latency", "timer", (), dict(TIMER_STATS)),
    SeriesStats("app.users", "set", (), {"count": 7.0}),
    SeriesStats("app.trace", "trace", (("stage", "init"),), {"count": 2.0}),
]
KEYS = ["app.requests,env=prod,name=shadow", "app.temp,room=a b", "app.latency", "app.users",
        "app.trace,stage=init"]


SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SCHEMA_FILES = {"legacy": "kafka-legacy-event", "json": "kafka-json-record",
                "influx": "kafka-influx-line"}


def check_against_published_schema(fmt: str, value: bytes) -> None:
    """The schemas in docs/schemas/ are what consumers code against: every message fits."""
    schema = json.loads((SCHEMAS / f"{SCHEMA_FILES[fmt]}.schema.json").read_text())
    document = value.decode() if fmt == "influx" else orjson.loads(value)
    jsonschema.Draft202012Validator(schema).validate(document)


def deliver(make_forwarder, bootstrap: str, topic: str, **section) -> dict[str, bytes]:
    forwarder = make_forwarder({"kafka_broker": bootstrap, "kafka_topic": topic, **section})
    assert forwarder.submit(snapshot(START, SERIES))
    assert forwarder.close(10) == 0
    assert forwarder.counters["delivered"] == len(SERIES)
    assert forwarder.counters["failed"] == forwarder.counters["spooled"] == 0
    messages = read_topic(bootstrap, topic)
    assert len(messages) == len(SERIES)
    by_key = {m.key.decode(): m.value for m in messages}
    assert sorted(by_key) == sorted(KEYS)
    for value in by_key.values():
        check_against_published_schema(section.get("format", "legacy"), value)
    return by_key


def test_legacy_events_keep_the_old_fields_and_protect_reserved_ones(
        make_forwarder, kafka_bootstrap, topic):
    by_key = deliver(make_forwarder, kafka_bootstrap, topic, kafka_apikey="K1",
                     kafka_tenant_id="T1")
    common = {"apikey": "K1", "tenant_id": "T1", "@version": "1",
              "@timestamp": "2023-11-14T22:13:20.000Z"}
    assert {k: orjson.loads(v) for k, v in by_key.items()} == {
        # the tag "name" would have overwritten the metric name in the old daemon
        KEYS[0]: {"name": "app.requests", "value": 30, **common, "env": "prod",
                  "tag_name": "shadow"},
        KEYS[1]: {"name": "app.temp", "value": 21.5, **common, "room": "a b"},
        KEYS[2]: {"name": "app.latency", "value": 2.5, **common},
        KEYS[3]: {"name": "app.users", "value": 7, **common},
        KEYS[4]: {"name": "app.trace", "value": 2, **common, "stage": "init"},
    }


def test_json_records_carry_type_tags_statistics_interval_and_host(
        make_forwarder, kafka_bootstrap, topic):
    by_key = deliver(make_forwarder, kafka_bootstrap, topic, format="json")
    interval = {"interval_start": START, "interval": 10.0, "host": "testhost"}
    assert {k: orjson.loads(v) for k, v in by_key.items()} == {
        KEYS[0]: {"name": "app.requests", "type": "counter",
                  "tags": {"env": "prod", "name": "shadow"},
                  "stats": {"count": 30.0, "rate": 3.0}, **interval},
        KEYS[1]: {"name": "app.temp", "type": "gauge", "tags": {"room": "a b"},
                  "stats": {"value": 21.5}, **interval},
        KEYS[2]: {"name": "app.latency", "type": "timer", "tags": {}, "stats": TIMER_STATS,
                  **interval},
        KEYS[3]: {"name": "app.users", "type": "set", "tags": {}, "stats": {"count": 7.0},
                  **interval},
        KEYS[4]: {"name": "app.trace", "type": "trace", "tags": {"stage": "init"},
                  "stats": {"count": 2.0}, **interval},
    }


def test_influx_lines_one_series_per_message(make_forwarder, kafka_bootstrap, topic):
    by_key = deliver(make_forwarder, kafka_bootstrap, topic, format="influx",
                     compression="none")
    ns = "1700000000000000000"
    assert {k: v.decode() for k, v in by_key.items()} == {
        KEYS[0]: f"app.requests,env=prod,name=shadow count=30.0,rate=3.0 {ns}",
        KEYS[1]: f"app.temp,room=a\\ b value=21.5 {ns}",
        KEYS[2]: "app.latency count=4.0,sum=10.0,min=1.0,max=4.0,mean=2.5,median=2.5,"
                 f"stddev=1.25,p50=2.0,p90=4.0,p99=4.0 {ns}",
        KEYS[3]: f"app.users count=7.0 {ns}",
        KEYS[4]: f"app.trace,stage=init count=2.0 {ns}",
    }


def test_a_series_stays_on_one_partition_in_interval_order(make_forwarder, kafka_bootstrap,
                                                           topic):
    forwarder = make_forwarder({"kafka_broker": kafka_bootstrap, "kafka_topic": topic,
                                "format": "json"})
    series = [SeriesStats("load.c", "counter", (("shard", str(i)),), {"count": 1.0, "rate": 0.1})
              for i in range(40)]
    for flush in range(3):
        assert forwarder.submit(snapshot(START + 10 * flush, series))
    assert forwarder.close(10) == 0
    placed: dict[bytes, list[tuple[int, int, float]]] = defaultdict(list)
    for message in read_topic(kafka_bootstrap, topic):
        record = orjson.loads(message.value)
        placed[message.key].append((message.partition, message.offset, record["interval_start"]))
    assert len(placed) == 40
    partitions = len(_partitions_of(kafka_bootstrap, topic))
    for key, seen in placed.items():
        assert {partition for partition, _, _ in seen} == {java_partition(key, partitions)}, key
        assert [start for _, _, start in sorted(seen)] == [START, START + 10, START + 20], key


def _partitions_of(bootstrap: str, topic: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    return list(AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
                .topics[topic].partitions)


def test_known_keys_land_where_the_java_client_would_put_them() -> None:
    # murmur2 vectors of Kafka's own UtilsTest.testMurmur2, made positive as the client does
    assert [java_partition(k, 1 << 31) for k in (b"21", b"foobar", b"a-little-bit-long-string",
            b"a-little-bit-longer-string", b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8")] \
        == [x & 0x7FFFFFFF for x in (-973932308, -790332482, -985981536, -1486304829,
                                      -58897971)]


def test_topic_template_by_type_and_by_tag(make_forwarder, kafka_bootstrap, topic):
    forwarder = make_forwarder({"kafka_broker": kafka_bootstrap,
                                "kafka_topic": topic + ".{type}.{tag:env}"})
    assert forwarder.submit(snapshot(START, SERIES[:2]))
    assert forwarder.close(10) == 0
    # "a b" is not a tag here; a series without the env tag goes to the stand-in name
    assert [m.key for m in read_topic(kafka_bootstrap, topic + ".counter.prod")] == \
        [KEYS[0].encode()]
    assert [m.key for m in read_topic(kafka_bootstrap, topic + ".gauge.untagged")] == \
        [KEYS[1].encode()]


def test_two_kafka_forwarders_run_side_by_side(make_forwarder, kafka_bootstrap, topic):
    legacy = make_forwarder({"type": "kafka", "kafka_broker": kafka_bootstrap,
                             "kafka_topic": topic + "-a"},
                            name="kafka_legacy")
    influx = make_forwarder({"type": "kafka", "kafka_broker": kafka_bootstrap,
                             "kafka_topic": topic + "-b", "format": "influx"},
                            name="kafka_influx")
    flush = snapshot(START, SERIES)
    assert legacy.submit(flush) and influx.submit(flush)
    assert legacy.close(10) == 0 and influx.close(10) == 0
    a, b = read_topic(kafka_bootstrap, topic + "-a"), read_topic(kafka_bootstrap, topic + "-b")
    assert len(a) == len(b) == len(SERIES)
    assert all(m.value.startswith(b"{") for m in a)
    assert all(m.value.startswith(b"app.") for m in b)
