"""Three local daemons' Kafka forwarders (``format: partials``, fed known snapshots) -> the
partials topic -> global members (real daemon processes) -> the output topic, read with
``read_committed``: every interval exactly once, counts and sums exact, percentiles within the
sketch's accuracy of the exact percentiles over the union of all samples, through a member
killed mid-interval and one added mid-run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from datasketches import hll_sketch
from global_helpers import Member, assert_matches, corpus, host_snapshot, truth, union_values

from forwarders.base import ForwarderContext
from forwarders.kafka import KafkaForwarder
from forwarders.kafka.formats import make_encoder
from forwarders.kafka.forwarder import ID_HEADER, message_id
from pystatsd.config import build_config
from pystatsd.global_tier.partial_state import HLL_LG_K
from pystatsd.sample import GAUGE, HISTOGRAM, SET, TIMER, Sample

pytestmark = pytest.mark.integration  # real global members and a real broker: not the fast loop

INTERVAL = 3.0
LATENESS = 1.5
PARTITIONS = 4
EXACT = 50  # small: the timers are sketched on each host, so the merge is a sketch merge
FIRST_REBALANCE = 60.0  # Tansu's first rebalance of a group takes ~20 s


def create_topics(bootstrap: str, topics: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topics["input_topic"], PARTITIONS, 1),
                                   NewTopic(topics["output_topic"], 2, 1)])
    for future in futures.values():
        future.result(30)


def forwarders(bootstrap: str, topic: str, tmp_path: Path) -> list[KafkaForwarder]:
    out = []
    for host in range(3):
        section = build_config({"forwarders": {"kafka": {
            "kafka_broker": bootstrap, "kafka_topic": topic, "format": "partials",
            "linger_ms": 0}}})["forwarders"]["kafka"]
        forwarder = KafkaForwarder("kafka", section, ForwarderContext(
            host=f"host{host}", state_dir=tmp_path / f"host{host}"))
        forwarder.start()
        out.append(forwarder)
    return out


def send_interval(senders: list[KafkaForwarder], start: float, seed: int,
                  again: Producer | None = None) -> list[Sample]:
    """Each host's snapshot of interval ``start``; returns the union of their samples. With
    ``again``, host 0's partials are also sent a second time, as a retried send delivers them:
    the same key, value and ``pystatsd-id``."""
    union: list[Sample] = []
    for host, forwarder in enumerate(senders):
        samples = corpus(host, seed, series=3, samples=120)
        union.extend(samples)
        snapshot = host_snapshot(host, start, samples, EXACT, INTERVAL)
        assert forwarder.submit(snapshot)
        if again is not None and host == 0:
            encode = make_encoder("partials")
            for series in snapshot.series:
                again.produce(senders[0].config["kafka_topic"], encode(series, snapshot),
                              series.key.encode(),
                              headers=[(ID_HEADER, message_id(series, snapshot))])
            assert again.flush(10) == 0
    return union


def wait_delivered(senders: list[KafkaForwarder], produced: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(f.stats().get("delivered", 0) for f in senders) >= produced:
            return
        time.sleep(0.05)
    raise AssertionError(f"partials not delivered: {[f.stats() for f in senders]}")


def next_interval_start(after: float) -> float:
    """Wait until an interval later than ``after`` begins, with room before its end, and
    return its start."""
    while True:
        now = time.time()
        start = math.floor(now / INTERVAL) * INTERVAL
        if start > after and now - start <= INTERVAL / 3:
            return start
        time.sleep(start + INTERVAL - now + 0.05)


def read_output(bootstrap: str, topic: str, expected: int,
                timeout: float) -> list[dict[str, Any]]:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-" + topic,
                       "isolation.level": "read_committed", "enable.auto.commit": False})
    reader.assign([TopicPartition(topic, p, 0) for p in range(2)])
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(records) < expected:
            for message in reader.consume(500, 0.5):
                if message.error() is None:
                    records.append(orjson.loads(message.value() or b""))
        # a moment more: a duplicate would show up now
        for message in reader.consume(500, 2.0):
            if message.error() is None:
                records.append(orjson.loads(message.value() or b""))
    finally:
        reader.close()
    return records


def check_output(records: list[dict[str, Any]], sent: dict[float, list[Sample]]) -> None:
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        key = (record["interval_start"], record["name"], record["type"],
               tuple(sorted(record["tags"].items())))
        assert key not in seen, f"interval emitted twice: {key}"
        seen[key] = record
    for start, union in sent.items():
        expected = truth(union, 1_000_000, INTERVAL)
        for (name, kind, tags), stats in expected.items():
            record = seen.pop((start, name, kind, tags), None)
            assert record is not None, f"missing {name} {kind} {tags} of interval {start}"
            assert record["interval"] == INTERVAL
            if kind == GAUGE:
                continue  # three hosts set it: one wins (the unit test checks which)
            sketched = kind in (TIMER, HISTOGRAM)
            assert_matches(record["stats"], stats,
                           union_values(union, name, kind, tags) if sketched else None)
    assert not seen, f"records of intervals never sent: {sorted(seen)[:3]}"


def run_intervals(senders: list[KafkaForwarder], count: int, seed: int,
                  sent: dict[float, list[Sample]],
                  during: Callable[[int], None] | None = None,
                  again: Producer | None = None) -> None:
    for index in range(count):
        start = next_interval_start(max(sent, default=-math.inf))
        sent[start] = send_interval(senders, start, seed + index, again if index == 1 else None)
        wait_delivered(senders, sum(len(truth(u, 1_000_000)) for u in sent.values()))
        if during is not None:
            during(index)


@pytest.fixture
def senders(global_bootstrap: str, global_topics: dict[str, str],
            tmp_path: Path) -> Any:
    create_topics(global_bootstrap, global_topics)
    made = forwarders(global_bootstrap, global_topics["input_topic"], tmp_path)
    yield made
    for forwarder in made:
        forwarder.close(5)


def test_two_members_merge_three_hosts_exactly(
        start_member: Callable[..., Member], senders: list[KafkaForwarder],
        global_bootstrap: str, global_topics: dict[str, str]) -> None:
    members = [start_member(f"m{i}", flush_interval=INTERVAL, lateness=LATENESS,
                            timer_exact_samples=EXACT) for i in range(2)]
    for member in members:
        assert member.wait_log("assigned partitions", FIRST_REBALANCE), member.log()
    # The forwarder's partitioner, so a second copy lands where the first did.
    junk = Producer({"bootstrap.servers": global_bootstrap, "partitioner": "murmur2_random"})
    for partition in range(PARTITIONS):  # not partials: counted and skipped, nothing else lost
        junk.produce(global_topics["input_topic"], b"not json", partition=partition)
    assert junk.flush(10) == 0
    sent: dict[float, list[Sample]] = {}
    run_intervals(senders, 3, seed=10, sent=sent, again=junk)
    expected = sum(len(truth(u, 1_000_000)) for u in sent.values())
    records = read_output(global_bootstrap, global_topics["output_topic"], expected,
                          INTERVAL + LATENESS + 20)
    check_output(records, sent)  # host 0's second copy of interval 2 was not merged
    logs = "".join(m.log() for m in members)
    assert "not a partial" in logs and "late_dropped': 0" in logs
    for member in members:
        member.stop()
    duplicates = [int(line.split("'duplicates': ")[1].split("}")[0])
                  for m in members for line in m.log().splitlines() if "stopped:" in line]
    assert sum(duplicates) == 18  # host 0's partials of one interval: 6 types x 3 series


def test_a_member_killed_mid_interval_loses_and_doubles_nothing(
        start_member: Callable[..., Member], senders: list[KafkaForwarder],
        global_bootstrap: str, global_topics: dict[str, str]) -> None:
    members = [start_member(f"k{i}", flush_interval=INTERVAL, lateness=LATENESS,
                            timer_exact_samples=EXACT) for i in range(2)]
    for member in members:
        assert member.wait_log("assigned partitions", FIRST_REBALANCE), member.log()
    sent: dict[float, list[Sample]] = {}
    run_intervals(senders, 2, seed=20, sent=sent)

    def kill_after_first(index: int) -> None:
        if index == 0:  # its partials are read and merged, its interval not closed yet
            time.sleep(0.3)
            members[0].kill()

    run_intervals(senders, 3, seed=30, sent=sent, during=kill_after_first)
    expected = sum(len(truth(u, 1_000_000)) for u in sent.values())
    records = read_output(global_bootstrap, global_topics["output_topic"], expected,
                          FIRST_REBALANCE)
    check_output(records, sent)
    assert "assigned partitions [0, 1, 2, 3]" in members[1].log()


def test_a_member_added_mid_run_takes_partitions_over_with_nothing_lost(
        start_member: Callable[..., Member], senders: list[KafkaForwarder],
        global_bootstrap: str, global_topics: dict[str, str]) -> None:
    first = start_member("a0", flush_interval=INTERVAL, lateness=LATENESS,
                         timer_exact_samples=EXACT)
    assert first.wait_log("assigned partitions [0, 1, 2, 3]", FIRST_REBALANCE), first.log()
    sent: dict[float, list[Sample]] = {}
    added: list[Member] = []

    def add_member(index: int) -> None:
        if index == 1:
            added.append(start_member("a1", flush_interval=INTERVAL, lateness=LATENESS,
                                      timer_exact_samples=EXACT))

    run_intervals(senders, 3, seed=40, sent=sent, during=add_member)
    assert added[0].wait_log("assigned partitions", FIRST_REBALANCE), added[0].log()
    run_intervals(senders, 3, seed=50, sent=sent)
    expected = sum(len(truth(u, 1_000_000)) for u in sent.values())
    records = read_output(global_bootstrap, global_topics["output_topic"], expected,
                          INTERVAL + LATENESS + 30)
    check_output(records, sent)
    assert "revoked partitions" in first.log()


def test_sets_past_the_limit_reach_the_output_within_the_sketch_error(
        start_member: Callable[..., Member], senders: list[KafkaForwarder],
        global_bootstrap: str, global_topics: dict[str, str]) -> None:
    """Three hosts' visitors, two of them past ``partial_set_members`` (sent as HyperLogLog
    sketches) and one under it (its members), through a real member: the output's count is
    the union's within the library's 2-sigma bound; a set every host sent exactly stays exact."""
    member = start_member("s0", flush_interval=INTERVAL, lateness=LATENESS,
                          timer_exact_samples=EXACT)
    assert member.wait_log("assigned partitions [0, 1, 2, 3]", FIRST_REBALANCE), member.log()
    visitors = [range(0, 30_000), range(20_000, 65_000), range(64_500, 65_400)]
    start = next_interval_start(-math.inf)
    for host, forwarder in enumerate(senders):
        samples = [Sample("site.visitors", SET, f"v{n}", 1.0, ()) for n in visitors[host]]
        samples += [Sample("site.admins", SET, f"a{n}", 1.0, ()) for n in range(host, host + 5)]
        assert forwarder.submit(host_snapshot(host, start, samples, EXACT, INTERVAL))
    wait_delivered(senders, 6)
    records = read_output(global_bootstrap, global_topics["output_topic"], 2,
                          INTERVAL + LATENESS + 20)
    counts = {record["name"]: record["stats"]["count"] for record in records
              if record["interval_start"] == start}
    assert len(records) == 2 and counts.keys() == {"site.visitors", "site.admins"}, records
    assert counts["site.admins"] == 7.0  # a0-a6: exact below the limit
    exact = len(set().union(*visitors))
    bound = max(abs(hll_sketch.get_rel_err(upper, True, HLL_LG_K, 2)) for upper in (True, False))
    assert abs(counts["site.visitors"] - exact) <= bound * exact, (counts, exact, bound)
