"""CPU cost of ``Pipeline.ingest`` alone (no sockets): lines/s and ns/line on pre-built payloads
shaped like bench/loadgen.c's (10,000 names; counters, gauges, timers, sets; half tagged),
plus the cost of one snapshot. For profiling: ``--profile`` prints the top cProfile entries.

    python bench/ingest_cpu.py [--lines 20] [--profile] [--slow] [--line-cache both]
    python bench/ingest_cpu.py --instructions [--lines 20] [--line-cache both] [--mix sets]
                               [--batch 64]

``--mix sets`` makes every line a set line (the same names, members drawn from 10,000, so an
interval's sets hold new members and repeats), to measure a set's update alone; ``--mix
timers`` every line a timer line (loadgen's 2,500 timer names, its 3-decimal milliseconds,
which a float does not hold: 8-byte samples), ``--mix integer-timers`` the same in whole
milliseconds (4-byte samples, ``pystatsd._linecache.new_samples``).

``--line-cache python|compiled|both`` measures the pure-Python line cache, the compiled one, or
both in one run, one after the other (default: the one the daemon would run; the
``PYSTATSD_LINE_CACHE`` switch of pystatsd.aggregation).

``--batch N`` hands the payloads to ``Pipeline.ingest_batch`` N at a time, as the native UDP
receive hands a ring's batch (one Python call per batch); without it, ``Pipeline.ingest`` one
payload at a time (the Python receive loop's way, and the only entry of older trees).

``--slow`` measures the reference path instead, without the line cache: decode_payload, the
tagger and MetricMgr.add per sample (what every line cost before the fast path).

``--instructions`` counts CPU instructions per line under ``valgrind --tool=callgrind``, which
unlike the clock repeats on a shared machine: after a warm-up (every name seen, the line cache
full, the cells bound) it ingests ``--window`` payloads through ``starmap()``, and callgrind
counts only inside its C ``next`` (``--toggle-collect=starmap_next``): ``Pipeline.ingest`` in
its steady state within one interval (no swap, no snapshot), plus one step per payload (or
batch)
Address randomisation is turned off (``setarch -R``) and the hash seed fixed, so that the
allocator's and the dicts' work repeats too (bench/callgrind_count.py, which
bench/graphite_ingest.py shares).
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

from callgrind_count import instructions_in_map, warm_then_map  # noqa: E402

from pystatsd import aggregation  # noqa: E402
from pystatsd import ingest as ingest_module  # noqa: E402
from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.decoders import decode_payload  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402
from pystatsd.tagging import Tagger  # noqa: E402

MIX = "loadgen"
"""Which lines ``make_line`` makes: ``loadgen`` (its mix), ``sets`` (set lines only),
``timers`` or ``integer-timers`` (timer lines only)."""


def make_line(rng: random.Random, names: int) -> bytes:
    i = rng.randrange(names)
    if MIX in ("timers", "integer-timers"):
        i += 2 - i % 4  # loadgen's timer names (even: never tagged)
    tags = "|#region:eu-1,shard:7" if i & 1 else ""
    if MIX == "sets":
        return f"bench.svc{i % 100}.users{i}:u{rng.randrange(10_000)}|s{tags}".encode()
    if MIX == "integer-timers":
        return f"bench.svc{i % 100}.latency{i}:{rng.randrange(500)}|ms{tags}".encode()
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


def count_only(lines: int, names: int, window: int, mapping: str | None = None,
               batch: int = 0, timer_cap: int | None = None) -> None:
    """The workload run under callgrind: warm up, then ingest ``window`` payloads through
    ``starmap``. Without ``batch`` it uses only ``Pipeline.ingest``, so it runs on older
    trees too (without ``mapping``, a ``mapping_file``; without ``timer_cap``, a
    ``timer_exact_samples``)."""
    config = build_config({"forwarders": {}, **({"mapping_file": mapping} if mapping else {}),
                           **({"timer_exact_samples": timer_cap} if timer_cap else {})})
    pipeline = Pipeline(config, MetricMgr(config), SelfStats())
    warm = max(names, 200_000 // lines)  # ~200k lines: every name is seen (coupon collector)
    if batch:
        warm = -(-warm // batch) * batch
    payloads = make_payloads(warm + window, lines, names)
    if not batch:
        warm_then_map(pipeline.ingest, payloads, warm)
        return

    def failed(payload: bytes) -> None:
        raise AssertionError("a bench payload failed")

    batches = [payloads[at:at + batch] for at in range(0, len(payloads), batch)]
    warm_then_map(lambda chunk: pipeline.ingest_batch(chunk, failed), batches, warm // batch)


def instructions_per_line(lines: int, names: int, window: int,
                          mapping: str | None = None, batch: int = 0,
                          timer_cap: int | None = None) -> float:
    """Instructions callgrind counts per line inside ``count_only``'s ``map`` (the line cache:
    PYSTATSD_LINE_CACHE in os.environ, set by main)."""
    collected = instructions_in_map(__file__, [
        "--lines", str(lines), "--names", str(names), "--window", str(window), "--count-only",
        "--mix", MIX, *(["--mapping", mapping] if mapping else []),
        *(["--batch", str(batch)] if batch else []),
        *(["--timer-exact-samples", str(timer_cap)] if timer_cap else [])])
    return collected / (window * lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20, help="lines per payload")
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--payloads", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--slow", action="store_true", help="the uncached reference path")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per line under callgrind (needs valgrind)")
    parser.add_argument("--window", type=int,
                        help="payloads measured by --instructions (default: 100,000 lines' "
                        "worth)")
    parser.add_argument("--count-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=0,
                        help="payloads per Pipeline.ingest_batch call (0: ingest each)")
    parser.add_argument("--mapping", help="a mapping_file to apply (bench/mapping-50.yml: "
                        "50 rules)")
    parser.add_argument("--line-cache", choices=["python", "compiled", "both"],
                        help="which line cache to measure (default: the one selected)")
    parser.add_argument("--timer-exact-samples", type=int, help="timer_exact_samples for "
                        "--instructions: a cap the window's timers pass (at 100, with a window "
                        "of 1M lines each timer folds about once in it), so the count includes "
                        "the fold")
    parser.add_argument("--mix", choices=["loadgen", "sets", "timers", "integer-timers"],
                        default="loadgen", help="the lines: loadgen's mix, set lines only, "
                        "timer lines only (3 decimals, or whole milliseconds)")
    args = parser.parse_args()
    global MIX
    MIX = args.mix
    if args.line_cache is None or args.count_only:
        run(args)
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    for which in (["python", "compiled"] if args.line_cache == "both" else [args.line_cache]):
        os.environ[aggregation.LINE_CACHE_ENV] = which  # for --instructions' subprocess
        chosen, label = (aggregation.PythonLineCache, "python") if which == "python" else (
            aggregation._select_line_cache())
        if label != which:
            raise SystemExit(f"the {which} line cache is not available: {label}")
        ingest_module.LineCache = chosen  # type: ignore[misc]
        print(f"[line cache: {which}]", flush=True)
        run(args)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


def run(args: argparse.Namespace) -> None:
    window = args.window or max(1, 100_000 // args.lines)
    if args.batch:  # whole batches only
        window = -(-window // args.batch) * args.batch
    if args.count_only:
        count_only(args.lines, args.names, window, args.mapping, args.batch,
                   args.timer_exact_samples)
        return
    if args.instructions:
        per_line = instructions_per_line(args.lines, args.names, window, args.mapping,
                                         args.batch, args.timer_exact_samples)
        entry = f"ingest_batch of {args.batch}" if args.batch else "ingest"
        print(f"{args.lines} lines/payload, {entry}: {per_line:,.0f} instructions/line "
              f"(callgrind, {window * args.lines:,} lines measured)")
        return

    config = build_config({"forwarders": {}})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    payloads = make_payloads(args.payloads, args.lines, args.names)
    for payload in payloads[: args.names]:  # warm the line cache
        pipeline.ingest(payload)
    manager.finish(manager.swap(), 10.0)

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
    best = best_cpu = float("inf")
    for _ in range(3):
        began, began_cpu = time.perf_counter(), time.process_time()
        for payload in payloads:
            ingest(payload)
        best = min(best, time.perf_counter() - began)
        best_cpu = min(best_cpu, time.process_time() - began_cpu)
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    lines = len(payloads) * args.lines
    label = "slow path, " if args.slow else ""
    print(f"{label}{args.lines} lines/payload: {lines / best:,.0f} lines/s, "
          f"{len(payloads) / best:,.0f} payloads/s, {best / lines * 1e9:.0f} ns/line; "
          f"{best_cpu / lines * 1e9:.0f} ns of CPU/line (process time: what a loaded machine "
          "takes from the clock figures)")
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    print(f"RSS {rss:.1f} MB with {manager.series_count()} series holding {3 * lines:,} samples"
          f" (and {len(payloads) * len(payloads[0]) / 1e6:.0f} MB of test payloads)")
    table = manager.swap()
    began = time.perf_counter()
    series = manager.finish(table, 10.0)
    print(f"snapshot of {len(series)} series ({3 * lines:,} samples): "
          f"{(time.perf_counter() - began) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
