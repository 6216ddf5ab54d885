"""Client timestamps (DogStatsD ``|T<unix>``, JSON ``timestamp``): a sample stamped inside the
current interval counts in it; one stamped before or after it is counted and passed through
with its timestamp (or dropped with ``late_samples: drop``); one further than
``timestamp_window_seconds`` from now is dropped and counted. The timestamp reaches the Kafka
message in each format."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from forwarders.kafka.formats import make_encoder
from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import Snapshot

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
HOUR = 3600


def run(payloads: list[bytes], **config: Any) -> tuple[Snapshot, dict[str, int]]:
    """Ingest ``payloads`` with an hour-long interval (so 'now' stays inside it), flush once."""
    built = build_config({"forwarders": {}, "flush_interval": HOUR, **config})
    stats = SelfStats()
    manager = MetricMgr(built, stats)
    pipeline = Pipeline(built, manager, stats)
    for payload in payloads:
        pipeline.ingest(payload)
    pipeline.publish_counts()
    series = manager.finish(manager.swap(), HOUR)
    return Snapshot(0.0, HOUR, "h", tuple(series)), dict(stats.take())


def stamped_payloads(now: int) -> list[bytes]:
    inside, late, future, ancient = now, now - 2 * HOUR + 600, now + HOUR + 60, now - 5 * HOUR
    return [
        b"hits:1|c|T%d\nhits:2|c|T%d" % (inside, inside),
        b"hits:5|c|T%d\nhits:7|c|T%d" % (late, late),   # late, one second: one point of 12
        b"hits:1|c|T%d" % future,
        b"hits:100|c|T%d" % ancient,                     # out of the window: dropped
        b"temp:-5|g|T%d" % late,                         # an Etsy delta alone starts at 0
        b"lat:10|ms|T%d\nlat:30|ms|T%d" % (late, late),
        orjson.dumps({"metric_name": "jobs", "metric_type": "counter", "value": 4,
                      "timestamp": inside}),
        orjson.dumps({"metric_name": "jobs", "metric_type": "counter", "value": 3,
                      "timestamp": late + 0.5}),          # same second as `late`
        orjson.dumps({"metric_name": "jobs", "metric_type": "counter", "value": 9,
                      "timestamp": ancient}),
    ]


def points(snapshot: Snapshot) -> dict[tuple[str, float | None], dict[str, float]]:
    return {(s.name, s.timestamp): s.stats for s in snapshot.series}


def test_samples_land_in_their_interval_or_pass_through_with_their_timestamp() -> None:
    now = int(time.time())
    late, future = float(now - 2 * HOUR + 600), float(now + HOUR + 60)
    snapshot, counts = run(stamped_payloads(now), timestamp_window_seconds=2 * HOUR)
    got = points(snapshot)
    assert got[("hits", None)]["count"] == 3
    assert got[("hits", late)]["count"] == 12
    assert got[("hits", future)]["count"] == 1
    assert got[("temp", late)]["value"] == -5
    assert {k: got[("lat", late)][k] for k in ("count", "min", "max")} == {
        "count": 2, "min": 10, "max": 30}
    assert got[("jobs", None)]["count"] == 4
    assert got[("jobs", late)]["count"] == 3
    assert len(got) == 7  # nothing stamped five hours ago
    assert counts["timestamps.late"] == 6
    assert counts["timestamps.future"] == 1
    assert counts["rejected.timestamp_out_of_window"] == 2
    assert counts["aggregated.samples"] == 10


def test_late_samples_drop_counts_and_drops_them() -> None:
    now = int(time.time())
    snapshot, counts = run(stamped_payloads(now), timestamp_window_seconds=2 * HOUR,
                           late_samples="drop")
    assert points(snapshot) == {("hits", None): {"count": 3.0, "rate": 3.0 / HOUR},
                                ("jobs", None): {"count": 4.0, "rate": 4.0 / HOUR}}
    assert counts["rejected.late_sample"] == 7
    assert counts["rejected.timestamp_out_of_window"] == 2


def test_the_timestamp_reaches_the_kafka_message_in_every_format() -> None:
    now = int(time.time())
    late = now - now % HOUR - 60  # a minute before this interval
    snapshot, _ = run([b"hits:5|c|T%d" % late, b"hits:1|c"], timestamp_window_seconds=2 * HOUR)
    by_stamp = {s.timestamp: s for s in snapshot.series if s.name == "hits"}
    passed, aggregate = by_stamp[float(late)], by_stamp[None]

    record = orjson.loads(make_encoder("json")(passed, snapshot) or b"")
    schema = json.loads((SCHEMAS / "kafka-json-record.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(record)
    assert record["timestamp"] == late and record["stats"]["count"] == 5
    assert "timestamp" not in orjson.loads(make_encoder("json")(aggregate, snapshot) or b"")

    influx = (make_encoder("influx")(passed, snapshot) or b"").decode()
    assert influx.endswith(f" {late * 1_000_000_000}")
    legacy = orjson.loads(make_encoder("legacy")(passed, snapshot) or b"")
    assert legacy["@timestamp"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(late))


@pytest.mark.integration
def test_the_daemon_passes_a_late_sample_through_to_its_output(start_daemon: Any) -> None:
    daemon = start_daemon({"flush_interval": 60})  # a stamp 15 minutes ago is late
    late = int(time.time()) - 900
    daemon.send_udp(b"hits:2|c|#env:prod|T%d" % late, b"hits:1|c|#env:prod",
                    orjson.dumps({"metric_name": "hits", "metric_type": "counter", "value": 4,
                                  "env": "prod", "timestamp": late}))
    time.sleep(0.3)
    assert daemon.stop() == 0
    records = [r for r in daemon.records() if r["name"] == "hits"]
    assert {r.get("timestamp", "interval"): r["stats"]["count"] for r in records} == {
        late: 6, "interval": 1}
    assert all(r["tags"] == {"env": "prod"} for r in records)
