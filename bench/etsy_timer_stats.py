"""What Etsy's extra timer statistics (``naming: etsy``) add to a flush: the CPU time of
``MetricMgr.finish_table`` over a table of timers, without and with the ``etsy_timers`` family
(``MetricMgr.extra_stats``), and under callgrind its instruction count, which repeats on a
shared machine where the clock does not.

    python bench/etsy_timer_stats.py [--series 2000] [--samples 200] [--runs 5]
    python bench/etsy_timer_stats.py --instructions [--series 2000] [--samples 200]

The samples are 3-decimal values, unit rate, below ``timer_exact_samples`` unless ``--samples``
is raised past it (then the thresholds come from the sketch's bins). ``--instructions`` counts
only inside ``map``'s C ``next`` (``--toggle-collect=map_next``), through which one
``finish_table`` is run; address randomisation off and the hash seed fixed, as in
bench/ingest_cpu.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from callgrind_count import collected  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pystatsd.aggregation import IntervalTable, MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.sample import TIMER, Sample  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402

ETSY = "etsy_timers"  # pystatsd.snapshot.ETSY_TIMER_STATS, spelled out for older trees


def filled(series: int, samples: int, etsy: bool) -> tuple[MetricMgr, IntervalTable]:
    manager = MetricMgr(build_config({"forwarders": {}}), SelfStats())
    if etsy:
        manager.extra_stats = frozenset({ETSY})
    rng = random.Random(1)
    for i in range(series):
        name = f"bench.svc{i % 100}.latency{i}"
        for _ in range(samples):
            manager.add(Sample(name, TIMER, rng.randrange(500_000) / 1000))
    return manager, manager.swap()


def count_only(series: int, samples: int, etsy: bool) -> None:
    manager, table = filled(series, samples, etsy)
    deque(map(lambda t: manager.finish_table(t, 10.0, pace=False), [table]), maxlen=0)


def instructions(series: int, samples: int, etsy: bool) -> int:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R",
             "valgrind", "--tool=callgrind", "--toggle-collect=map_next",
             f"--callgrind-out-file={workdir}/out", sys.executable, __file__,
             "--series", str(series), "--samples", str(samples), "--count-only",
             *(["--etsy"] if etsy else [])],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return collected(result.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--count-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--etsy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_only:
        count_only(args.series, args.samples, args.etsy)
        return
    label = f"{args.series} timers x {args.samples} samples"
    if args.instructions:
        plain = instructions(args.series, args.samples, False)
        etsy = instructions(args.series, args.samples, True)
        print(f"{label}: finish_table {plain / args.series:,.0f} instructions/series, with "
              f"etsy_timers {etsy / args.series:,.0f} (x{etsy / plain:.2f}); "
              f"load {os.getloadavg()[0]:.1f}")
        return
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.runs):  # alternated, so that the machine's load falls on both
        for etsy in (False, True):
            manager, table = filled(args.series, args.samples, etsy)
            began = time.thread_time()
            manager.finish_table(table, 10.0, pace=False)
            times[etsy].append(time.thread_time() - began)
    plain, etsy = (statistics.median(times[key]) * 1000 for key in (False, True))
    print(f"{label}: finish_table CPU median of {args.runs}: {plain:.1f} ms, with etsy_timers "
          f"{etsy:.1f} ms (x{etsy / plain:.2f}); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
