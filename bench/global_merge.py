"""Global tier: partial series merged per second per member, and the delay from an interval's
end to its global record.

1. In process, no broker: each host's partials of ``--series`` series (a mix: counters, gauges,
   sets, timers with exact samples and timers past ``timer_exact_samples``, so sketched) are
   encoded once; the clock runs over decoding and merging all hosts' partials and computing the
   merged statistics, which is a member's work per partial besides consuming.
2. End to end on a broker: one ``mode: global`` member (a daemon process) on the partials
   topic; three hosts' Kafka forwarders (``format: partials``) send an interval of
   ``--series`` series each just after it starts; a ``read_committed`` reader times the last
   global record of that interval after the interval's end. The delay is the lateness window
   (``--lateness``) plus the member's closing (merge, produce, commit) plus the read.

Broker: --bootstrap HOST:PORT, else an embedded Tansu broker started for the run (it competes
with the member and the senders for this machine's cores).

Run: PYTHONPATH=. python bench/global_merge.py [--series 10000] [--interval 5] [--lateness 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import yaml  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from forwarders.base import ForwarderContext  # noqa: E402
from forwarders.kafka import KafkaForwarder  # noqa: E402
from forwarders.kafka.embedded_broker import EmbeddedBroker  # noqa: E402
from forwarders.kafka.formats import make_encoder  # noqa: E402
from forwarders.kafka.partials import decode_partial  # noqa: E402
from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.distribution import percentile_key  # noqa: E402
from pystatsd.global_tier.partial_state import SeriesMerge  # noqa: E402
from pystatsd.sample import COUNTER, GAUGE, SET, TIMER, Sample  # noqa: E402
from pystatsd.snapshot import Snapshot  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOSTS = 3
EXACT = 100
PERCENTILES = [(float(p), percentile_key(p)) for p in (50, 90, 95, 99)]


def host_snapshot(host: int, start: float, interval: float, series: int) -> Snapshot:
    """One host's interval: a quarter each counters, gauges, sets (20 members), timers (half
    with 20 samples, half with 300, past EXACT, so sketched)."""
    rng = random.Random(host)
    config = build_config({"timer_exact_samples": EXACT, "forwarders": {"kafka": {
        "kafka_topic": "p", "format": "partials", "kafka_broker": "127.0.0.1:1"}}})
    mgr = MetricMgr(config)
    for index in range(series):
        tags = (("shard", str(index)),)
        kind = (COUNTER, GAUGE, SET, TIMER)[index % 4]
        name = f"bench.{kind}.{index // 200}"
        if kind == COUNTER:
            mgr.add(Sample(name, kind, 1.0, 1.0, tags))
        elif kind == GAUGE:
            mgr.add(Sample(name, kind, float(index), 1.0, tags))
        elif kind == SET:
            for _ in range(20):
                mgr.add(Sample(name, kind, f"u{rng.randint(0, 100)}", 1.0, tags))
        else:
            for _ in range(300 if index % 8 == 3 else 20):
                mgr.add(Sample(name, kind, rng.lognormvariate(3, 1), 1.0, tags))
    return Snapshot(start, interval, f"host{host}", tuple(mgr.finish(mgr.swap(), interval)))


def merge_rate(series: int) -> None:
    encode = make_encoder("partials")
    messages = []
    for host in range(HOSTS):
        snapshot = host_snapshot(host, 0.0, 10.0, series)
        messages.extend(v for v in (encode(s, snapshot) for s in snapshot.series) if v)
    best = math.inf
    for _ in range(3):
        began = time.process_time()
        merges: dict[tuple[str, str, object], SeriesMerge] = {}
        for value in messages:
            partial = decode_partial(value)
            key = (partial["name"], partial["type"], partial["tags"])
            merge = merges.get(key)
            if merge is None:
                merge = merges[key] = SeriesMerge(partial["type"])
            merge.add(partial["partial"], 10.0, partial["host"], EXACT, 0.01)
        for merge in merges.values():
            merge.stats(10.0, PERCENTILES, 0.01)
        best = min(best, time.process_time() - began)
    print(f"merge, in process: {len(messages)} partials ({HOSTS} hosts x {series} series) "
          f"into {len(merges)} series in {best:.3f} CPU-s: "
          f"{len(messages) / best:,.0f} partial series/s on one core")


def end_to_end(bootstrap: str, series: int, interval: float, lateness: float) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = {"input_topic": f"bench-partials-{tag}", "output_topic": f"bench-global-{tag}",
              "group_id": f"bench-{tag}"}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topics["input_topic"], 4, 1),
                                       NewTopic(topics["output_topic"], 1, 1)]).values():
        future.result(30)
    with tempfile.TemporaryDirectory() as state:
        config = {"mode": "global", "flush_interval": interval, "timer_exact_samples": EXACT,
                  "state_dir": state, "logging": {"level": "INFO"},
                  "global": {"kafka_broker": bootstrap, "lateness": lateness, **topics}}
        path = Path(state) / "member.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (Path(state) / "member.log").open("wb")
        member = subprocess.Popen([sys.executable, "-m", "pystatsd", "-c", str(path)],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        senders = []
        try:
            deadline = time.monotonic() + 60
            while b"assigned partitions" not in (Path(state) / "member.log").read_bytes():
                if time.monotonic() > deadline:
                    raise SystemExit("the member was never assigned partitions")
                time.sleep(0.2)
            for host in range(HOSTS):
                section = build_config({"forwarders": {"kafka": {
                    "kafka_broker": bootstrap, "kafka_topic": topics["input_topic"],
                    "format": "partials"}}})["forwarders"]["kafka"]
                forwarder = KafkaForwarder("kafka", section, ForwarderContext(
                    host=f"host{host}", state_dir=Path(state) / f"host{host}"))
                forwarder.start()
                senders.append(forwarder)
            made = [host_snapshot(h, 0.0, interval, series) for h in range(HOSTS)]
            start = (math.floor(time.time() / interval) + 1) * interval
            snapshots = [dataclasses.replace(snapshot, start=start) for snapshot in made]
            time.sleep(max(0.0, start - time.time()))
            for forwarder, snapshot in zip(senders, snapshots, strict=True):
                forwarder.submit(snapshot)
            expected = len({(s.name, s.type, s.tags) for snap in snapshots
                            for s in snap.series if s.partial is not None})
            reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "r-" + tag,
                               "isolation.level": "read_committed"})
            reader.assign([TopicPartition(topics["output_topic"], 0, 0)])
            got, last_at = 0, 0.0
            give_up = time.monotonic() + interval + lateness + 60
            while got < expected and time.monotonic() < give_up:
                for message in reader.consume(1000, 0.2):
                    if message.error() is None and \
                            orjson.loads(message.value() or b"")["interval_start"] == start:
                        got += 1
                        last_at = time.time()
            reader.close()
            if got < expected:
                tail = (Path(state) / "member.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"only {got} of {expected} global records arrived; the "
                                 f"member's log ends:\n{tail}")
            delay = last_at - (start + interval)
            print(f"end to end: {HOSTS} hosts x {series} series -> {expected} global records; "
                  f"last record {delay:.2f} s after the interval's end (lateness {lateness} s, "
                  f"so {delay - lateness:.2f} s to merge, produce and commit)")
        finally:
            for forwarder in senders:
                forwarder.close(10)
            member.send_signal(signal.SIGTERM)
            member.wait(30)
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--lateness", type=float, default=1.0)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    merge_rate(args.series)
    if args.bootstrap:
        end_to_end(args.bootstrap, args.series, args.interval, args.lateness)
        return
    with EmbeddedBroker() as broker:
        end_to_end(broker.bootstrap, args.series, args.interval, args.lateness)


if __name__ == "__main__":
    main()
