"""The receive workers' merge in the daemon (``workers/merge.py``: ``TableMerge``, one
``SeriesMerge`` per series, back to one table), in callgrind instructions per worker series,
a figure the machine's load does not move (bench/workers.py --merge gives CPU time).

Two workers' partials of ``--series`` series (bench/workers.py --merge's mix: counters,
gauges, timers, sets in turn, 5 samples each; every series in every worker, so each is a real
merge) are encoded once; the decoding and merging run inside ``itertools.starmap`` under
``valgrind --tool=callgrind --toggle-collect=starmap_next``. ``--kind`` keeps one type only
(its figure is then per worker series of that type). ``--checkout DIR`` counts another tree's
merge too (e.g. main's, from ``git archive``), in the same run.

    PYTHONPATH=. python bench/merge_instructions.py [--series 4000] [--kind set]
                                                    [--checkout DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
from collections import deque
from itertools import starmap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KINDS = ("counter", "gauge", "timer", "set")
WORKERS = 2


def counted(series: int, kind: str) -> None:
    """The workload under callgrind (imports from the checkout on PYTHONPATH)."""
    from pystatsd.config import build_config
    from pystatsd.sample import Sample
    from pystatsd.selfstats import SelfStats
    from pystatsd.workers.gauge_order import TimedMetricMgr
    from pystatsd.workers.merge import TableMerge, encode_table

    config = build_config({"forwarders": {}})
    rng = random.Random(1)
    managers = [TimedMetricMgr(config) for _ in range(WORKERS)]
    for i in range(series):
        kind_i = KINDS[i % 4] if not kind else kind
        for manager in managers:
            for _ in range(5):
                value: Any = (f"u{rng.randrange(100)}" if kind_i == "set"
                              else float(rng.randrange(1000)))
                manager.add(Sample(f"bench.s{i}", kind_i, value))
    encoded = [encode_table(m.swap(), {"received.lines": 1}, m.accuracy) for m in managers]
    parent = TimedMetricMgr(config)

    def merge() -> None:
        tables = TableMerge(parent)
        for data in encoded:
            tables.add_encoded(data)
        tables.add_table(parent.swap())
        tables.table(parent, SelfStats())

    deque(starmap(merge, [()]), maxlen=0)
    os._exit(0)


def per_worker_series(checkout: Path, series: int, kind: str) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R", "valgrind", "--tool=callgrind",
             "--toggle-collect=starmap_next", f"--callgrind-out-file={workdir}/out.%p",
             sys.executable, __file__, "--count", "--series", str(series), "--kind", kind],
            capture_output=True, text=True, check=True, cwd=checkout,
            env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(checkout)})
    found = re.search(r"Collected : (\d+)", result.stderr)
    assert found is not None, result.stderr[-2000:]
    return int(found.group(1)) / (series * WORKERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=4000)
    parser.add_argument("--kind", choices=("", *KINDS), default="")
    parser.add_argument("--checkout", action="append", default=[], type=Path)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:
        counted(args.series, args.kind)
    for checkout in [REPO, *args.checkout]:
        figure = per_worker_series(checkout.resolve(), args.series, args.kind)
        print(f"{checkout}: merge of {args.kind or 'the mix'}, {figure:,.0f} instructions per "
              f"worker series (callgrind, {args.series:,} series x {WORKERS} workers)",
              flush=True)


if __name__ == "__main__":
    main()
