"""CPU cost of a graphite listener's datapoints in ``Pipeline.ingest`` (no sockets), for each
``graphite_datapoints`` choice, side by side in one run: ns per datapoint, and with
``--instructions`` CPU instructions per datapoint under callgrind (repeatable on a shared
machine, as bench/ingest_cpu.py counts them: bench/callgrind_count.py).

    python bench/graphite_ingest.py [--lines 20] [--names 10000]
    python bench/graphite_ingest.py --instructions [--lines 20] [--only rules ...]

The choices: ``before`` (a graphite payload as the pipeline took every one before listeners
chose: relayed and aggregated as a gauge), ``relay+aggregate``, ``relay``, ``aggregate`` and
``rules`` (aggregate by a four-rule list making three paths in four counters, timers and sets:
the cost of the rules and of those types' aggregation), ``unmatched`` (the same four rules,
which match no path here: the rules' own cost, every datapoint still a gauge). The relay is
a stand-in that takes the lines and keeps nothing, so what is measured is the pipeline's own
work, not carbon_routes' routing (bench/carbon_routes.py measures that)."""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callgrind_count import instructions_in_map, warm_then_map  # noqa: E402

from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.graphite_ingest import GraphiteSource  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402

CHOICES = ("before", "relay+aggregate", "relay", "aggregate", "rules", "unmatched")
RULES = [{"regex": r"^bench\.svc\d+\.(requests)\d+$", "type": "counter"},
         {"sub": ".latency", "type": "timer"},
         {"prefix": "bench.users", "type": "set"},
         {"prefix": "debug.", "drop": True}]


class _Discard:
    """A relay that takes graphite lines and keeps nothing."""

    INPUT_FORMAT = "graphite"

    def __init__(self) -> None:
        self.lines = 0

    def submit_lines(self, lines: list[bytes], from_json: bool = False) -> bool:
        self.lines += len(lines)
        return True


def make_payloads(count: int, lines: int, names: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    now = int(time.time())
    kinds = ("requests", "queue", "latency", "users")

    def line() -> bytes:
        i = rng.randrange(names)
        path = (f"bench.users{i}" if i % 4 == 3 else
                f"bench.svc{i % 100}.{kinds[i % 4]}{i}")
        return f"{path} {rng.randrange(1000)} {now}".encode()

    return [b"\n".join(line() for _ in range(lines)) for _ in range(count)]


def pipeline_for(choice: str) -> tuple[Pipeline, MetricMgr, Any]:
    """The pipeline and the ``ingest`` call of one choice."""
    unmatched = [{**rule, "prefix": "elsewhere."} for rule in RULES]
    config = build_config({"forwarders": {}, "graphite_rules": {"bench": RULES, "none": unmatched},
                           "flush_interval": 3600, "timestamp_window_seconds": 7200})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats(), [_Discard()])  # type: ignore[list-item]
    uses = {"relay+aggregate": ("relay", "aggregate"), "relay": ("relay",),
            "aggregate": ("aggregate",), "rules": ("aggregate",),
            "unmatched": ("aggregate",)}.get(choice)
    source = GraphiteSource("listener.tcp.bench", uses, {"rules": "bench",
                                                         "unmatched": "none"}.get(choice))
    ingest = pipeline.ingest

    def run(payload: bytes) -> None:
        if choice == "before":
            ingest(payload, "graphite")
        else:
            ingest(payload, "graphite", False, source)

    return pipeline, manager, run


def count_only(choice: str, lines: int, names: int, window: int) -> None:
    """The workload under callgrind: warm up (every path seen), then ``window`` payloads
    through ``map``, the only ``map`` after start-up."""
    _, _, run = pipeline_for(choice)
    warm = max(names, 100_000 // lines)
    warm_then_map(run, make_payloads(warm + window, lines, names), warm)


def instructions_per_datapoint(choice: str, lines: int, names: int, window: int) -> float:
    collected = instructions_in_map(__file__, [
        "--lines", str(lines), "--names", str(names), "--window", str(window), "--count-only",
        choice])
    return collected / (window * lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20, help="datapoints per payload")
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--payloads", type=int, default=5_000)
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per datapoint under callgrind (needs valgrind)")
    parser.add_argument("--window", type=int, help="payloads measured by --instructions "
                                                   "(default: 20,000 datapoints' worth)")
    parser.add_argument("--only", choices=CHOICES, action="append",
                        help="measure this choice (repeatable; default: every one)")
    parser.add_argument("--count-only", choices=CHOICES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    window = args.window or max(1, 20_000 // args.lines)
    if args.count_only:
        count_only(args.count_only, args.lines, args.names, window)
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} at start; {args.lines} datapoints/payload")
    if args.instructions:
        for choice in args.only or CHOICES:
            per = instructions_per_datapoint(choice, args.lines, args.names, window)
            print(f"{choice:>16}: {per:,.0f} instructions/datapoint "
                  f"(callgrind, {window * args.lines:,} measured)")
        return
    payloads = make_payloads(args.payloads, args.lines, args.names)
    runs = {choice: pipeline_for(choice)[2] for choice in CHOICES}
    for run in runs.values():  # warm: every path seen
        for payload in payloads[: max(1, args.names // args.lines)]:
            run(payload)
    best = dict.fromkeys(CHOICES, float("inf"))
    for _ in range(3):  # interleaved, so a burst of load costs every choice alike
        for choice, run in runs.items():
            began = time.perf_counter()
            for payload in payloads:
                run(payload)
            best[choice] = min(best[choice], time.perf_counter() - began)
    datapoints = len(payloads) * args.lines
    for choice in CHOICES:
        print(f"{choice:>16}: {best[choice] / datapoints * 1e9:,.0f} ns/datapoint, "
              f"{datapoints / best[choice]:,.0f} datapoints/s")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
