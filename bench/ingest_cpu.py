"""CPU cost of ``Pipeline.ingest`` alone (no sockets): lines/s and ns/line on pre-built payloads
shaped like bench/loadgen.c's (10,000 names; counters, gauges, timers, sets; half tagged),
plus the cost of one snapshot. For profiling: ``--profile`` prints the top cProfile entries.

    python bench/ingest_cpu.py [--lines 20] [--profile] [--slow]

``--slow`` measures the reference path instead, without the line cache: decode_payload, the
tagger and MetricMgr.add per sample (what every line cost before the fast path).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.decoders import decode_payload  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402
from pystatsd.tagging import Tagger  # noqa: E402


def make_line(rng: random.Random, names: int) -> bytes:
    i = rng.randrange(names)
    tags = "|#region:eu-1,shard:7" if i & 1 else ""
    kind = i % 4
    if kind == 0:
        text = f"bench.svc{i % 100}.requests{i}:1|c{tags}"
    elif kind == 1:
        text = f"bench.svc{i % 100}.queue{i}:{rng.randrange(1000)}|g{tags}"
    elif kind == 2:
        text = (f"bench.svc{i % 100}.latency{i}:{rng.randrange(500)}.{rng.randrange(1000):03d}"
                f"|ms{tags}")
    else:
        text = f"bench.svc{i % 100}.users{i}:u{rng.randrange(1000)}|s{tags}"
    return text.encode()


def make_payloads(count: int, lines: int, names: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [b"\n".join(make_line(rng, names) for _ in range(lines)) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20, help="lines per payload")
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--payloads", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--slow", action="store_true", help="the uncached reference path")
    args = parser.parse_args()

    config = build_config({"forwarders": {}})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    payloads = make_payloads(args.payloads, args.lines, args.names)
    for payload in payloads[: args.names]:  # warm the line cache
        pipeline.ingest(payload)
    manager.snapshot(manager.swap(), 0.0, 10.0, "bench")

    ingest = pipeline.ingest
    if args.slow:
        stats = SelfStats()
        tagger = Tagger(config["agent"]["tags"], config["tag_precedence"])

        def ingest(payload: bytes) -> None:
            for sample in decode_payload(payload, stats):
                manager.add(sample._replace(tags=tagger.apply(sample.tags)))
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for payload in payloads:
            ingest(payload)
        best = min(best, time.perf_counter() - began)
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    lines = len(payloads) * args.lines
    label = "slow path, " if args.slow else ""
    print(f"{label}{args.lines} lines/payload: {lines / best:,.0f} lines/s, "
          f"{len(payloads) / best:,.0f} payloads/s, {best / lines * 1e9:.0f} ns/line")
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    print(f"RSS {rss:.1f} MB with {manager.series_count()} series holding {3 * lines:,} samples"
          f" (and {len(payloads) * len(payloads[0]) / 1e6:.0f} MB of test payloads)")
    table = manager.swap()
    began = time.perf_counter()
    snapshot = manager.snapshot(table, 0.0, 10.0, "bench")
    print(f"snapshot of {len(snapshot.series)} series ({3 * lines:,} samples): "
          f"{(time.perf_counter() - began) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
