"""Bytes per series of each type, measured with ``tracemalloc`` through the receive path.

For each type, ``--series`` distinct series (half with two DogStatsD tags) each get one line
through ``Pipeline.ingest``: the bytes then held per series are an *active* series (its cell
and key in the interval's table, its line-cache entry). Then a flush (``swap`` + ``finish``)
with no new lines: what stays is an *idle* series (the line-cache entry, and for gauges and
cumulative traces the carried value), until the cache is emptied or the carried value expires.

Sets are measured again with ``--members`` distinct members each (and every member sent
twice): the bytes per member are the difference from the one-member set, divided by the
members added.

    python bench/series_bytes.py [--series 10000] [--members 100]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402

LINES = {"counter": "c", "gauge": "g", "timer": "ms", "histogram": "h", "set": "s",
         "trace": ""}


def measure(kind: str, series: int, members: int = 1) -> tuple[float, float]:
    config = build_config({"forwarders": {}, "trace_cumulative": kind == "trace"})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    value = "u1" if kind == "set" else "1"
    if kind == "trace":  # JSON only
        payloads = [(f'{{"metric_name": "svc{i % 100}.metric{i}.trace", "metric_type": "trace"'
                     + (', "region": "eu-1", "shard": "7"' if i & 1 else "") + "}").encode()
                    for i in range(series)]
        warm = [p.replace(b"svc", b"warm.svc") for p in payloads[:100]]
    else:
        payloads = [(f"svc{i % 100}.metric{i}.{kind}:{value}|{LINES[kind]}"
                     + ("|#region:eu-1,shard:7" if i & 1 else "")).encode()
                    for i in range(series)]
        warm = [(b"warm." + p) for p in payloads[:100]]
        if kind == "set" and members > 1:  # each series' members, each sent twice
            payloads = [b"\n".join([p.replace(b":u1|", b":u%d|" % m) for m in range(members)]
                                   * 2) for p in payloads]
    for payload in warm:  # interned strings, grown dicts of the pipeline itself
        pipeline.ingest(payload)
    manager.finish(manager.swap(), 10.0)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for payload in payloads:
        pipeline.ingest(payload)
    gc.collect()
    active = tracemalloc.get_traced_memory()[0] - base
    snapshot = manager.finish(manager.swap(), 10.0)
    del snapshot
    gc.collect()
    idle = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return active / series, idle / series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=100, help="members of the larger sets")
    args = parser.parse_args()
    print(f"bytes per series ({args.series:,} of each type, half tagged), Python "
          f"{sys.version.split()[0]}, {REPO}:")
    one_member = 0.0
    for kind in LINES:
        active, idle = measure(kind, args.series)
        one_member = active if kind == "set" else one_member
        print(f"  {kind:9}  active {active:6,.0f}   idle {idle:6,.0f}")
    active, idle = measure("set", args.series, args.members)
    print(f"  set of {args.members} members: active {active:6,.0f}   idle {idle:6,.0f}   "
          f"{(active - one_member) / (args.members - 1):.1f} bytes per member")


if __name__ == "__main__":
    main()
