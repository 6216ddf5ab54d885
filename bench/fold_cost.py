"""Instructions per sample folded into a timer's sketch (``Distribution.fold``), by callgrind.

Past ``timer_exact_samples`` a timer's kept samples are folded into its DDSketch, one
``sketch.add`` each: the cost a timer line pays, later, once its series passes the cap. 60
distributions of 1,000 samples (1,000 distinct values, 0-500 with three decimals, as
bench/loadgen.c sends) are made, 10 folded to warm up, 50 counted (``bench/callgrind_count.py``).
``--repo`` counts another checkout's code under the same harness.

    python bench/fold_cost.py [--repo /work/main]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from callgrind_count import instructions_in_map, warm_then_map  # noqa: E402

FOLDS, WARM, SAMPLES = 60, 10, 1000


def count(repo: str) -> None:
    sys.path.insert(0, repo)
    from pystatsd.distribution import Distribution

    rng = random.Random(5)
    pool = [rng.randrange(500) + rng.randrange(1000) / 1000 for _ in range(SAMPLES)]
    cells = []
    for _ in range(FOLDS):
        cell = Distribution()
        for _ in range(SAMPLES):
            cell.values.append(rng.choice(pool))
        cells.append(cell)
    warm_then_map(lambda cell: cell.fold(0.01), cells, WARM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(BENCH.parent))
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:
        count(args.repo)
        return
    total = instructions_in_map(__file__, ["--count", "--repo", args.repo])
    print(f"{args.repo}: {total / (FOLDS - WARM) / SAMPLES:,.0f} instructions a sample folded")


if __name__ == "__main__":
    main()
