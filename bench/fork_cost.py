"""What ``fork()`` costs the daemon at a flush, and what the heap it copies is made of.

The forked snapshot (``pystatsd/forked_snapshot.py``) holds the GIL for the ``fork()`` call:
the kernel copies the page tables of every private page the process has, so the receive thread
waits for as long as that takes. This fills a table as ``bench/flush_pause.py`` does (its mix
of counters, gauges, timers and sets, half tagged), in a child process of its own so that the
payloads it ingested are gone (a daemon holds no payloads), and reports:

- RSS of the interpreter after imports and after the fill (the payloads freed and trimmed),
  and what tracemalloc counts of it (``--trace``);
- ``fork()`` wall time in the parent (the child leaves at once), the median and the worst of
  ``--forks`` forks;
- the same after ``forked_snapshot.collapse_heap`` (``--huge``: ``madvise(MADV_HUGEPAGE)``
  then ``MADV_COLLAPSE`` on the dense private writable mappings, as the daemon does before each
  fork), where the kernel copies one entry per 2 MiB instead of 512, and what that took.

Run it with ``PYTHONMALLOC=malloc`` and/or ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in the
environment to see what the allocator changes (pymalloc's 1 MiB arenas are mmapped apart from
glibc's heap; ``PYTHONMALLOC=malloc`` puts every object on glibc's heap, which ``hugetlb=1``
advises for huge pages).

    python bench/fork_cost.py [--names 100000] [--forks 20] [--huge] [--trace]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from snapshot import make_payloads  # noqa: E402

from pystatsd import forked_snapshot  # noqa: E402
from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402

LIBC = ctypes.CDLL(None)


def status(field: str, path: str = "/proc/self/status") -> float:
    """A ``kB`` field of /proc/self/status (or smaps_rollup), in MB."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_forks(count: int) -> list[float]:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        times.append(time.perf_counter() - began)
        os.waitpid(pid, 0)
        time.sleep(0.05)
    return times


def fill(args: argparse.Namespace) -> tuple[MetricMgr, Pipeline]:
    config = build_config({"forwarders": {}})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    payloads = make_payloads(args.names, 10, args.max_samples, 20, max_members=args.max_members)
    for _ in range(2):  # the carried gauges a running daemon has
        for payload in payloads:
            pipeline.ingest(payload)
        manager.finish_table(manager.swap(), 10.0, pace=False)
    for payload in payloads:
        pipeline.ingest(payload)
    del payloads
    gc.collect()
    LIBC.malloc_trim(0)  # the payloads' memory back, as a daemon never held it
    return manager, pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--forks", type=int, default=20)
    parser.add_argument("--max-members", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=100)
    parser.add_argument("--huge", action="store_true", help="advise and collapse huge pages")
    parser.add_argument("--trace", action="store_true", help="tracemalloc the fill (slow)")
    args = parser.parse_args()
    start_rss = status("VmRSS")
    if args.trace:
        tracemalloc.start()
    manager, pipeline = fill(args)
    traced = tracemalloc.get_traced_memory()[0] / 2**20 if args.trace else 0.0
    if args.trace:
        tracemalloc.stop()
    gc.freeze()  # as the daemon does after start-up and after each forked flush
    rss = status("VmRSS")
    label = (f"PYTHONMALLOC={os.environ.get('PYTHONMALLOC', '-')} "
             f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '-')}"
             + (" +madvise(HUGEPAGE)" if args.huge else ""))
    huge_note = ""
    if args.huge:
        began = time.perf_counter()
        collapsed = forked_snapshot.collapse_heap()
        took = time.perf_counter() - began
        again = time.perf_counter()
        forked_snapshot.collapse_heap()
        huge_note = (f"; collapsed {collapsed / 2**20:,.0f} MB in {took * 1000:,.0f} ms "
                     f"(again: {(time.perf_counter() - again) * 1000:,.1f} ms), RSS then "
                     f"{status('VmRSS'):.0f} MB")
    anon_huge = status("AnonHugePages", "/proc/self/smaps_rollup")
    times = time_forks(args.forks)
    print(f"{label}: {manager.series_count():,} series; RSS at start {start_rss:.0f} MB, "
          f"filled {rss:.0f} MB" + (f" (traced {traced:.0f} MB)" if args.trace else "")
          + f"{huge_note}; AnonHugePages {anon_huge:.0f} MB; fork() median "
          f"{statistics.median(times) * 1000:.2f} ms, worst {max(times) * 1000:.2f} ms "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    del pipeline


if __name__ == "__main__":
    main()
