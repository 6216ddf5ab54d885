"""Kafka forwarder throughput: series per second from a flush to the broker's acknowledgement.

For each size (10,000 and 100,000 series by default) and format, one snapshot of that many
counter series is submitted to a started KafkaForwarder (default settings: idempotent, acks=all,
lz4, linger 20 ms) and the clock runs until every message's delivery report says delivered.
Each size is run a few times after one warm-up flush that creates the topic; the median is
reported. Target: a 100,000-series flush acknowledged within 2 s.

Broker: --bootstrap HOST:PORT, else an embedded Tansu broker started for the run (on the same
machine, so it competes with the forwarder for the CPU).

``--prepared`` splits each flush as the daemon does: ``KafkaForwarder.prepare`` (the encoding,
which the daemon runs in its forked snapshot child) timed on its own, then the flush submitted
with its result, so the clock from submit to handed over is what the daemon's process spends.

Run: PYTHONPATH=. python bench/kafka.py [--sizes 10000,100000] [--formats legacy,json,influx]
[--prepared]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forwarders.base import ForwarderContext  # noqa: E402
from forwarders.kafka import KafkaForwarder  # noqa: E402
from forwarders.kafka.embedded_broker import EmbeddedBroker  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.snapshot import SeriesStats, Snapshot  # noqa: E402


def flush_of(size: int, start: float) -> Snapshot:
    series = [SeriesStats(f"bench.requests.{i % 100}", "counter",
                          (("host", f"web-{i // 100}"), ("service", "api")),
                          {"count": float(i % 17), "rate": (i % 17) / 10.0})
              for i in range(size)]
    return Snapshot(start=start, interval=10.0, host="bench", series=series)


def time_flush(forwarder: KafkaForwarder, snapshot: Snapshot, timeout: float = 60.0,
               prepared: list[Any] | None = None) -> tuple[float, float]:
    """Seconds until the flush was encoded (unless ``prepared``) and handed to the producer,
    and until acknowledged."""
    target = forwarder.counters["delivered"] + len(snapshot.series)
    handed_target = forwarder.counters["sent"] + len(snapshot.series)
    began = time.perf_counter()
    handed = None
    if not forwarder.submit(snapshot, prepared):
        raise RuntimeError("forwarder queue full")
    while forwarder.counters["delivered"] < target:
        if handed is None and forwarder.counters["sent"] >= handed_target:
            handed = time.perf_counter() - began
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"not acknowledged within {timeout} s: {forwarder.stats()}")
        time.sleep(0.001)
    acked = time.perf_counter() - began
    return (acked if handed is None else handed), acked


def run(bootstrap: str, size: int, fmt: str, repeats: int,
        prepared: bool = False) -> list[tuple[float, float, float]]:
    """(encode, handed, acknowledged) seconds per flush; encode is the prepare alone with
    ``prepared``, else 0 (it is inside handed)."""
    name = "kafka"
    section = {"kafka_broker": bootstrap, "kafka_topic": f"bench-{uuid.uuid4().hex[:8]}",
               "format": fmt}
    config = build_config({"forwarders": {name: section}})["forwarders"][name]
    with tempfile.TemporaryDirectory() as state:
        forwarder = KafkaForwarder(name, config, ForwarderContext(state_dir=Path(state)))
        forwarder.start()
        try:
            time_flush(forwarder, flush_of(min(size, 1000), 0.0))  # topic creation, connections
            snapshots = [flush_of(size, 10.0 * (n + 1)) for n in range(repeats)]
            results = []
            for snapshot in snapshots:
                ready, encode = None, 0.0
                if prepared:
                    began = time.perf_counter()
                    ready = KafkaForwarder.prepare(forwarder.config, snapshot)
                    encode = time.perf_counter() - began
                results.append((encode, *time_flush(forwarder, snapshot, prepared=ready)))
            return results
        finally:
            forwarder.close(10)
            if forwarder.counters["spooled"] or forwarder.counters["failed"]:
                print(f"  warning: {forwarder.stats()}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="use this cluster instead of an embedded broker")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--formats", default="legacy,json,influx")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepared", action="store_true",
                        help="encode apart (as the snapshot child does), then hand over")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    broker = None if args.bootstrap else EmbeddedBroker()
    bootstrap = args.bootstrap or broker.start()  # type: ignore[union-attr]
    print(f"broker: {'embedded Tansu at ' if broker else ''}{bootstrap}")
    try:
        for fmt in args.formats.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                results = run(bootstrap, size, fmt, args.repeats, args.prepared)
                times = [acked for _, _, acked in results]
                median = statistics.median(times)
                handed = statistics.median(h for _, h, _ in results)
                encoded = (f"prepared in {statistics.median(e for e, _, _ in results):.3f} s "
                           f"apart, then handed to the producer in {handed:.3f} s"
                           if args.prepared else
                           f"encoded and handed to the producer in {handed:.3f} s")
                print(f"{fmt:7s} {size:>7,} series: flush->ack median {median:6.3f} s "
                      f"({size / median:>9,.0f} series/s; {encoded}), load "
                      f"{os.getloadavg()[0]:.1f}, runs: " + ", ".join(f"{t:.3f}" for t in times),
                      flush=True)
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
