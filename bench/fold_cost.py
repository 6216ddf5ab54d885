"""Instructions per sample folded into a timer's sketch (``Distribution.fold``), by callgrind.

Past ``timer_exact_samples`` a timer's kept samples are folded into its DDSketch: the cost a
timer line pays, later, once its series passes the cap. 60 distributions of 1,000 samples
(1,000 distinct values, 0-500 with three decimals, as bench/loadgen.c sends) are made, 10
folded to warm up, 50 counted, for each fold the ``PYSTATSD_FOLD`` switch selects
(pystatsd.distribution): ``library`` (the ddsketch library's ``add`` per sample, as before),
``python`` (``fold_values_python``) and ``compiled`` (pystatsd/_fold.pyx).

The folds are driven through ``itertools.starmap`` and callgrind counts inside its C ``next``
only (``--toggle-collect=starmap_next``), not through ``map`` as bench/callgrind_count.py
does: the fold calls ``map`` itself, and a nested ``map_next`` would toggle the count off
while it runs. Address randomisation is off and the hash seed fixed, as there.
``--repo`` counts another checkout's code (without the switch: its own fold only).

    python bench/fold_cost.py [--fold library,python,compiled] [--repo /work/main]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
from collections import deque
from itertools import starmap
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from callgrind_count import collected  # noqa: E402

FOLDS, WARM, SAMPLES = 60, 10, 1000


def count(repo: str) -> None:
    sys.path.insert(0, repo)
    from pystatsd import distribution
    from pystatsd.distribution import Distribution

    # A checkout whose samples may be floats: its append keeps each exact (older: the array's)
    append = getattr(distribution, "append_sample", None) or (lambda values, v: values.append(v))

    rng = random.Random(5)
    pool = [rng.randrange(500) + rng.randrange(1000) / 1000 for _ in range(SAMPLES)]
    cells = []
    for _ in range(FOLDS):
        cell = Distribution()
        for _ in range(SAMPLES):
            append(cell.values, rng.choice(pool))
        cells.append(cell)
    for cell in cells[:WARM]:
        cell.fold(0.01)
    deque(starmap(Distribution.fold, ((cell, 0.01) for cell in cells[WARM:])), maxlen=0)


def instructions(repo: str, fold: str | None) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if fold:
        env["PYSTATSD_FOLD"] = fold
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R",
             "valgrind", "--tool=callgrind", "--toggle-collect=starmap_next",
             f"--callgrind-out-file={workdir}/out", sys.executable, __file__, "--count",
             "--repo", repo], capture_output=True, text=True, check=True, env=env)
    return collected(result.stderr)  # the started process's count, as the shared harness reads it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(BENCH.parent))
    parser.add_argument("--fold", default="library,python,compiled",
                        help="which folds (PYSTATSD_FOLD values), comma-separated; empty: "
                        "the checkout's default")
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:
        count(args.repo)
        return
    for fold in args.fold.split(",") if args.fold else [None]:
        total = instructions(args.repo, fold)
        print(f"{args.repo} [{fold or 'default'}]: {total / (FOLDS - WARM) / SAMPLES:,.0f} "
              "instructions a sample folded", flush=True)


if __name__ == "__main__":
    main()
