"""A Kafka flush encoded in the forked snapshot child (``KafkaForwarder.prepare``) puts on the
broker exactly the messages the same flush sent in process puts there, and a forwarder without
the hook, in the same daemon, still gets every flush whole."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kafka_helpers import forwarder_config, snapshot

from forwarders import AggregateForwarder, ForwarderContext, SeriesStats, Snapshot
from forwarders.kafka import KafkaForwarder
from forwarders.kafka.reading import read_topic
from pystatsd import forked_snapshot
from pystatsd.config import build_config
from pystatsd.daemon import Daemon

pytestmark = pytest.mark.integration

START = 1_700_000_000.0
PAYLOADS = [
    b"web.hits:3|c|#env:prod,zone:a\nweb.hits:2|c|@0.5|#env:prod,zone:a\nweb.hits:1|c",
    b"db.latency:12|ms|#env:prod\ndb.latency:30|ms|#env:prod\ndb.latency:7|ms",
    b"queue.depth:40|g\nqueue.depth:-5|g\nusers:alice|s\nusers:bob|s\nusers:alice|s",
    b"payload.size:512|h|#env:dev\n#comment.like:1|c\nweird name,with=chars:1|c",
    b"_e{6,9}:deploy|v1 is out|#env:prod",
]


class Plain(AggregateForwarder):
    """A third-party forwarder without ``prepare``: it keeps what it is sent."""

    got: ClassVar[list[Snapshot]] = []

    def send(self, snapshot: Snapshot) -> None:
        Plain.got.append(snapshot)


def never_in_process(self: KafkaForwarder, flush: Snapshot) -> None:
    raise AssertionError("a flush the snapshot child prepared was encoded again in process")


def run_daemon(tmp_path: Path, bootstrap: str, topic: str, fmt: str,
               plain: bool = True) -> dict[str, Any]:
    """One daemon's life at a fixed clock: start, the payloads, one flush, stop (whose final
    flush is a short interval of its own); what its Kafka forwarder counted. ``plain``: a
    forwarder without ``prepare`` beside it (else the daemon makes no series objects)."""
    now = [START + 5.0]
    config = build_config({
        "state_dir": str(tmp_path), "flush_interval": 10, "self_metrics": {"enabled": False},
        "listeners": [{"protocol": "udp", "port": 0}],
        "forwarders": {"kafka": {"type": "kafka", "kafka_broker": bootstrap,
                                 "kafka_topic": topic, "events_topic": f"{topic}-events",
                                 "format": fmt}}})
    daemon = Daemon(config, clock=lambda: now[0], host="testhost")
    daemon.start()
    if plain:
        beside = Plain("plain", {}, ForwarderContext(state_dir=tmp_path))
        beside.start()
        daemon.forwarders["plain"] = beside
    try:
        for payload in PAYLOADS:
            daemon._deliver(payload)
        now[0] = START + 10.2
        daemon.flush()
        daemon._deliver(b"web.hits:5|c|#env:prod,zone:a\nqueue.depth:+2|g")
    finally:
        daemon.stop()
    return daemon.forwarders["kafka"].stats()


def messages(bootstrap: str, topic: str) -> dict[int, list[tuple[Any, ...]]]:
    by_partition: dict[int, list[tuple[Any, ...]]] = {}
    for message in read_topic(bootstrap, topic, timeout=30, idle=2.0):
        by_partition.setdefault(message.partition, []).append(
            (message.key, message.value, message.headers))
    return by_partition


@pytest.fixture
def plain_flushes() -> Iterator[list[Snapshot]]:
    Plain.got = []
    yield Plain.got


def test_a_flush_prepared_in_the_snapshot_child_sends_what_one_sent_in_process_sends(
        kafka_bootstrap: str, topic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        plain_flushes: list[Snapshot]) -> None:
    # influx: one series it cannot carry, so the problems counted in the child are too; every
    # format goes through the same prepare, so one is enough for the two paths.
    fmt = "influx"
    with monkeypatch.context() as patch:
        patch.setattr(KafkaForwarder, "send", never_in_process)
        forked = run_daemon(tmp_path / "forked", kafka_bootstrap, f"{topic}-forked", fmt)
    forked_flushes = list(plain_flushes)
    plain_flushes.clear()
    with monkeypatch.context() as patch:  # alone, it gets a DeferredSnapshot: the same messages
        patch.setattr(KafkaForwarder, "send", never_in_process)
        alone = run_daemon(tmp_path / "alone", kafka_bootstrap, f"{topic}-alone", fmt,
                           plain=False)
    assert plain_flushes == []
    with monkeypatch.context() as patch:
        patch.setattr(forked_snapshot, "AVAILABLE", False)  # no fork: all in process
        in_process = run_daemon(tmp_path / "in-process", kafka_bootstrap, f"{topic}-local", fmt)

    assert forked["send_errors"] == 0 and in_process["send_errors"] == 0
    assert forked["sent"] == in_process["sent"] > 0
    assert forked["unencodable"] == in_process["unencodable"] == 1
    got = messages(kafka_bootstrap, f"{topic}-forked")
    events = messages(kafka_bootstrap, f"{topic}-forked-events")
    assert sum(map(len, events.values())) == 1
    assert sum(map(len, got.values())) + 1 == forked["produced"] > 8
    assert got == messages(kafka_bootstrap, f"{topic}-local")
    assert events == messages(kafka_bootstrap, f"{topic}-local-events")
    assert (alone["sent"], alone["unencodable"]) == (forked["sent"], 1)
    assert messages(kafka_bootstrap, f"{topic}-alone") == got
    assert messages(kafka_bootstrap, f"{topic}-alone-events") == events
    # The forwarder without the hook got each flush whole, the same in both daemons.
    assert [len(flush.series) for flush in forked_flushes] == \
        [len(flush.series) for flush in plain_flushes] == [9, 2]
    assert forked_flushes == plain_flushes


def test_the_series_a_preparation_did_not_see_are_encoded_after_the_prepared_ones(
        make_forwarder: Any) -> None:
    """The daemon's self-metrics come after the prepared series: the messages of the whole
    flush are the same, in the same order, as when nothing was prepared."""
    forwarder = make_forwarder({"kafka_topic": "{type}", "format": "legacy",
                                "kafka_broker": "127.0.0.1:1"}, start=False)
    flush = snapshot(START, [SeriesStats(f"s{i}", "counter" if i % 2 else "gauge",
                                         (("host", f"h{i}"),), {"count": float(i), "value": 1.0})
                             for i in range(7)])
    prepared = KafkaForwarder.prepare(forwarder_config(
        {"type": "kafka", "kafka_topic": "{type}", "format": "legacy",
         "kafka_broker": "127.0.0.1:1"}), dataclasses.replace(flush, series=flush.series[:4]))
    assert prepared[0] == 4 and len(prepared) == 2 + 4
    assert forwarder._records(flush, prepared) == forwarder._records(flush)
    assert [key for _, key, _, _ in forwarder._records(flush)] == \
        [f"s{i},host=h{i}".encode() for i in range(7)]
