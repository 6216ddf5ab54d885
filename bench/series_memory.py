"""RSS against the number of series the table holds, per metric type, and whether the memory of
a burst of new names is given back once those series expire. No sockets: statsd lines go through
``Pipeline.ingest`` (the decoders, the tagger, the line cache, MetricMgr) as the daemon's receive
thread hands them on, and flushes are ``swap`` + ``finish`` as the daemon does them.

    python bench/series_memory.py                       # the table, every type, 100k-400k
    python bench/series_memory.py --types gauge --series 1000000
    python bench/series_memory.py --burst 1000000       # RSS before, at, after expiry

Each measurement runs in a fresh interpreter, so one type's freed memory does not hide the
next one's. ``VmRSS`` is read from /proc/self/status; ``VmHWM`` (the peak) includes the flush's
snapshot (one SeriesStats per series), which a forwarder holds while it sends.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402

LINES = {"counter": b"%s:1|c", "gauge": b"%s:42|g", "timer": b"%s:12.5|ms",
         "set": b"%s:member|s", "counter_tagged": b"%s:1|c|#env:prod,region:eu-west-1"}
BATCH = 20


def status() -> dict[str, float]:
    """VmRSS and VmHWM in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def feed(pipeline: Pipeline, shape: bytes, start: int, count: int) -> None:
    for first in range(start, start + count, BATCH):
        last = min(first + BATCH, start + count)
        pipeline.ingest(b"\n".join(shape % b"app.service.requests.endpoint_%07d" % i
                                   for i in range(first, last)))


def one_table(kind: str, series: int) -> dict[str, float]:
    """RSS with ``series`` series of ``kind`` in the table, and after their flush."""
    config = build_config({"forwarders": {}, "max_series": series + 1,
                           "idle_expiry_intervals": 2})
    manager = MetricMgr(config, SelfStats())
    pipeline = Pipeline(config, manager, manager.stats)
    gc.collect()
    empty = status()["VmRSS"]
    feed(pipeline, LINES[kind], 0, series)
    full = status()["VmRSS"]
    snapshot = manager.finish(manager.swap(), 10.0)
    assert len(snapshot) == series, len(snapshot)
    flushed = status()
    del snapshot
    return {"empty_mb": empty, "full_mb": full, "after_flush_mb": flushed["VmRSS"],
            "peak_mb": flushed["VmHWM"],
            "bytes_per_series": (full - empty) * 1024 * 1024 / series}


def burst(series: int, trim: bool) -> dict[str, float]:
    """A steady 10k gauges, then a burst of ``series`` new gauge names in one interval; the
    burst expires after ``idle_expiry_intervals`` (2) flushes without it."""
    config = build_config({"forwarders": {}, "max_series": series + 20_000,
                           "idle_expiry_intervals": 2})
    manager = MetricMgr(config, SelfStats())
    pipeline = Pipeline(config, manager, manager.stats)
    libc = ctypes.CDLL("libc.so.6")

    def interval(new: int) -> int:
        feed(pipeline, b"steady.%s:1|g", 0, 10_000)
        if new:
            feed(pipeline, LINES["gauge"], 0, new)
        count = len(manager.finish(manager.swap(), 10.0))
        gc.collect()
        if trim:
            libc.malloc_trim(0)
        return count

    interval(0)
    before = status()["VmRSS"]
    held = interval(series)
    at_burst = status()["VmRSS"]
    levels = [manager.series_levels()["series.carried"]]
    for _ in range(3):
        interval(0)
        levels.append(manager.series_levels()["series.carried"])
    return {"before_mb": before, "at_burst_mb": at_burst, "after_expiry_mb": status()["VmRSS"],
            "held_at_burst": held, "carried_after_each_flush": levels}


def run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", default=",".join(LINES))
    parser.add_argument("--series", default="100000,400000")
    parser.add_argument("--burst", type=int, default=0)
    parser.add_argument("--trim", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (burst(args.burst, args.trim) if args.burst
                  else one_table(args.types, int(args.series)))
        print(json.dumps(result))
        return
    if args.burst:
        for trim in (False, True):
            result = run(["--burst", str(args.burst)] + (["--trim"] if trim else []))
            print(f"burst of {args.burst:,} gauges{' + malloc_trim' if trim else ''}: "
                  f"RSS {result['before_mb']:.0f} MB before, {result['at_burst_mb']:.0f} MB "
                  f"at the burst ({result['held_at_burst']:,} series flushed), "
                  f"{result['after_expiry_mb']:.0f} MB after expiry; carried after each "
                  f"flush: {[int(n) for n in result['carried_after_each_flush']]}")
        return
    print(f"{'type':<15} {'series':>9} {'empty MB':>9} {'full MB':>8} {'B/series':>9} "
          f"{'peak MB':>8} {'after flush MB':>14}")
    for kind in args.types.split(","):
        for series in map(int, args.series.split(",")):
            r = run(["--types", kind, "--series", str(series)])
            print(f"{kind:<15} {series:>9,} {r['empty_mb']:>9.0f} {r['full_mb']:>8.0f} "
                  f"{r['bytes_per_series']:>9.0f} {r['peak_mb']:>8.0f} "
                  f"{r['after_flush_mb']:>14.0f}")


if __name__ == "__main__":
    main()
