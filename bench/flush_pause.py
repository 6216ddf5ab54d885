"""The longest pause in receiving while a flush finishes a large table, through the daemon's
own UDP listener (native receive and the Python loop), forked or in process.

One process, as the daemon: a ``pystatsd.listeners.UdpListener`` (8 MiB receive buffer, as
configured by default) delivers each datagram under the ingest lock to ``Pipeline.ingest``,
noting the time of each delivery; the main thread fills a table of ``--names`` series
(``bench/snapshot.py``'s mix: counters, gauges, timers, sets, half with tags; two fills before
so the carried gauges exist), then, while ``build/udp_blast`` (bench/udp_blast.c) offers
``--rate`` datagrams/s of one counter line, swaps the table and finishes it in a forked child
(``pystatsd.forked_snapshot``; ``forked``: huge pages first, ``forked-4k``: not, as the daemon
runs) or in process (``local``, paced), then frees it, as ``Daemon.flush`` does.

Per run it reports, during the flush, in a window of 1 s before it (the machine's own noise)
and in the second after it (the snapshot kept alive, as forwarders do):

- the longest gap in *draining the socket*: between two returns of ``recvmmsg`` on the native
  receive's drain thread (``Ring.longest_drain_gap``); for the Python loop, which drains and
  delivers in one thread, the longest gap between two deliveries;
- the longest gap in *delivering* (two datagrams handed to the ingest);
- the kernel's drops for the socket during the flush (``/proc/net/udp``), and datagrams lost
  overall (offered - delivered).

The sender offers a batch every 0.5-1 ms, so gaps up to ~1 ms are the sender's.

    python bench/flush_pause.py [--names 100000] [--rate 100000] [--modes forked-4k]
                                [--receive native,python] [--runs 2]
    python bench/flush_pause.py --bare-forks [--heap-mb 300] [--forks 8]  # fork() alone
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import gc
import mmap
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from array import array  # noqa: E402

from snapshot import GcTimer, make_payloads  # noqa: E402

from pystatsd import forked_snapshot  # noqa: E402
from pystatsd.aggregation import MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.listeners import UdpListener  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402

BLAST = REPO / "build" / "udp_blast"
AFTER = 1.0
"""Seconds watched after the flush: a collection that the snapshot's objects set off lands
there."""
BEFORE = 1.0
"""Seconds watched before the flush: the machine's own gaps, to set beside those during it."""
SETTLE = 0.02
"""Seconds after a window before its drain gap is read: a stalled drain notes its gap only
when its next ``recvmmsg`` returns."""


class SharedPayloads:
    """The payloads in a shared anonymous mapping, not on the heap: a daemon holds no
    payloads, and ``fork()`` copies no page tables for a shared mapping (held on the heap they
    were ~150 MB of the 540 MB the fork copied at 100,000 series)."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.ends = array("Q")
        total = 0
        for payload in payloads:
            total += len(payload)
            self.ends.append(total)
        self.blob = mmap.mmap(-1, max(total, 1))
        at = 0
        for payload in payloads:
            self.blob[at:at + len(payload)] = payload
            at += len(payload)

    def __iter__(self) -> Iterator[bytes]:
        start = 0
        for end in self.ends:
            yield self.blob[start:end]
            start = end


def build_blast() -> Path:
    if not BLAST.exists():
        BLAST.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(BLAST), str(REPO / "bench" / "udp_blast.c")],
                       check=True)
    return BLAST


class DropWatch(threading.Thread):
    """The kernel's drop count for one UDP port (``/proc/net/udp``), every 50 ms: which
    window the losses fell in."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.wanted = f"0100007F:{port:04X}"
        self.samples: list[tuple[float, int]] = []
        self.stopping = False

    def read(self) -> int:
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == self.wanted:
                return int(fields[-1])
        return 0

    def run(self) -> None:
        while not self.stopping:
            self.samples.append((time.monotonic(), self.read()))
            time.sleep(0.05)

    def between(self, start: float, end: float) -> int:
        inside = [n for t, n in self.samples if start <= t <= end + 0.1]
        before = [n for t, n in self.samples if t < start]
        return (inside[-1] if inside else 0) - (before[-1] if before else 0)


class Delivery:
    """What the listener hands on: each datagram timed, then ingested under the lock."""

    def __init__(self, pipeline: Pipeline, lock: threading.Lock) -> None:
        self.times: list[float] = []
        note, clock, ingest = self.times.append, time.monotonic, pipeline.ingest

        def deliver(payload: bytes) -> None:
            note(clock())
            with lock:
                ingest(payload)

        self.deliver = deliver


class DrainGaps:
    """The longest gap in draining the socket per window: the native drain thread's own
    measure, or, for the Python loop, the gaps between deliveries (the same thread)."""

    def __init__(self, listener: UdpListener, delivery: Delivery) -> None:
        self.ring = listener._ring
        self.delivery = delivery
        self.since = time.monotonic()

    def take(self) -> float:
        """The longest gap since the last call."""
        now = time.monotonic()
        if self.ring is not None:
            gap = float(self.ring.longest_drain_gap())
        else:
            gap = longest_gap(self.delivery.times, self.since, now)
        self.since = now
        return gap


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest gap between two deliveries that overlaps [start, end]: a pause that began
    before the window, or ends after it, counts whole."""
    low = max(bisect.bisect_left(times, start) - 1, 0)
    high = bisect.bisect_right(times, end) + 1
    near = times[low:high]
    return max((b - a for a, b in zip(near, near[1:], strict=False)), default=end - start)


def one_run(mode: str, receive: str, args: argparse.Namespace,
            payloads: SharedPayloads) -> str:
    # max_series above the table: the default (250,000) would cap a --names 1000000 run.
    config = build_config({"forwarders": {}, "max_series": max(250_000, 2 * args.names),
                           "listeners": [{"protocol": "udp", "address": "127.0.0.1",
                                          "port": 0}]})
    manager = MetricMgr(config)
    lock = threading.Lock()
    pipeline = Pipeline(config, manager, SelfStats())
    for _ in range(2):  # the second fill finds the carried gauges a running daemon has
        for payload in payloads:
            pipeline.ingest(payload)
        table = manager.swap()
        manager.finish_table(table, 10.0, pace=False)
    for payload in payloads:
        pipeline.ingest(payload)
    series = manager.series_count()
    delivery = Delivery(pipeline, lock)
    listener = UdpListener(config["listeners"][0], delivery.deliver, SelfStats(),
                           native=receive == "native")
    assert listener.receive == receive, f"{receive} receive is not available"
    listener.start()
    port = listener.address[1]
    watch = DropWatch(port)
    watch.start()
    blast = subprocess.Popen([str(build_blast()), "127.0.0.1", str(port), str(args.rate),
                              str(args.seconds), "1", "1000"], stdout=subprocess.PIPE, text=True)
    time.sleep(args.lead - BEFORE)
    drains = DrainGaps(listener, delivery)
    time.sleep(BEFORE)
    drain_before = drains.take()
    collections = GcTimer()
    collections.armed = True
    rss = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status")
               if line.startswith("VmRSS:"))
    began = time.monotonic()
    with lock:
        table = manager.swap()
    if mode.startswith("forked"):  # forked: huge pages before the fork; forked-4k: none
        forked_snapshot.HUGE_PAGES = mode == "forked"
        snapshot = forked_snapshot.finish_forked(manager, table, 10.0, lock)
    else:
        snapshot = manager.finish(table, 10.0)
    flushed = len(snapshot)
    forked_snapshot.release(table)
    del table
    ended = time.monotonic()
    time.sleep(SETTLE)
    drain_during = drains.take()
    time.sleep(AFTER)  # the snapshot still alive, as while forwarders encode it
    drain_after = drains.take()
    del snapshot
    collections.armed = False
    gc.callbacks.remove(collections.callback)
    sent_text, _ = blast.communicate()
    time.sleep(0.3)
    listener.stop()
    ring_full = listener.describe().get("ring_full", "-")
    watch.stopping = True
    watch.join()
    sent = int(sent_text.split()[0])
    times = delivery.times
    received = len(times)
    window = ended - began
    during = longest_gap(times, began, ended)
    after = longest_gap(times, ended, ended + AFTER)
    before = longest_gap(times, began - BEFORE, began)
    rate = sum(began <= t <= ended for t in times) / window
    return (f"{mode:9} {receive:6} {series:,} series -> {flushed:,} (RSS {rss:.0f} MB): "
            f"flush {window * 1000:,.0f} ms; longest gap draining the socket during it "
            f"{drain_during * 1000:.1f} ms, after {drain_after * 1000:.1f} ms "
            f"(before {drain_before * 1000:.1f} ms); delivering during it "
            f"{during * 1000:.1f} ms, after {after * 1000:.1f} ms (before {before * 1000:.1f} "
            f"ms); delivered {rate:,.0f} datagrams/s during it; "
            f"lost {sent - received:,} of {sent:,} ({watch.between(began, ended):,} "
            f"dropped by the kernel during the flush; ring full {ring_full} times); "
            f"longest garbage collection "
            f"{collections.longest * 1000:.0f} ms (generation {collections.generation})")


def bare_forks(receive: str, args: argparse.Namespace) -> None:
    """``fork()`` alone, ``--forks`` times, with ``--heap-mb`` of small objects on the heap
    (what the page-table copy scales with), while the listener receives ``--rate``/s: each
    fork's duration beside the longest drain gap during it and in the 0.3 s before it."""
    heap = [{f"k{i}": [i, str(i)]} for i in range(args.heap_mb * 2500)]  # ~400 B each
    gc.freeze()
    rss = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status")
               if line.startswith("VmRSS:"))
    config = build_config({"forwarders": {}, "listeners": [
        {"protocol": "udp", "address": "127.0.0.1", "port": 0}]})
    delivery = Delivery(Pipeline(config, MetricMgr(config), SelfStats()), threading.Lock())
    listener = UdpListener(config["listeners"][0], delivery.deliver, SelfStats(),
                           native=receive == "native")
    listener.start()
    port = listener.address[1]
    blast = subprocess.Popen([str(build_blast()), "127.0.0.1", str(port), str(args.rate),
                              str(1.0 + args.forks * 0.8), "1", "1000"],
                             stdout=subprocess.PIPE, text=True)
    drains = DrainGaps(listener, delivery)
    forks, gaps, before = [], [], []
    time.sleep(0.2)
    for _ in range(args.forks):
        drains.take()
        time.sleep(0.3)
        before.append(drains.take())
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forked = time.monotonic()
        time.sleep(SETTLE)  # a drain stalled by the fork records its gap when it resumes
        gaps.append(drains.take())
        os.waitpid(pid, 0)
        forks.append(forked - began)
        time.sleep(0.1)
    blast.communicate()
    time.sleep(0.3)
    listener.stop()
    del heap

    def ms(values: list[float]) -> str:
        return "/".join(f"{v * 1000:.1f}" for v in values)

    print(f"{receive:6} heap {rss:,.0f} MB: fork {ms(forks)} ms; longest drain gap during "
          f"each {ms(gaps)} ms (in the 0.3 s before each: {ms(before)} ms); kernel drops "
          f"{listener.kernel_drops:,} (load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%H:%M:%S')})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=100_000, help="datagrams/s offered")
    parser.add_argument("--modes", default="forked-4k",
                        help="forked (huge pages first), forked-4k (without, as the daemon "
                             "runs), local")
    parser.add_argument("--receive", default="native,python",
                        help="the listener's receive: native (drain thread and ring), python")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--max-members", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=100)
    parser.add_argument("--bare-forks", action="store_true",
                        help="fork() alone with a heap of --heap-mb, --forks times (fast)")
    parser.add_argument("--heap-mb", type=int, default=300)
    parser.add_argument("--forks", type=int, default=8)
    args = parser.parse_args()
    build_blast()
    if args.bare_forks:
        for receive in args.receive.split(","):
            bare_forks(receive, args)
        return
    payloads = SharedPayloads(make_payloads(args.names, 10, args.max_samples, 20,
                                            max_members=args.max_members))
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # the list's memory back to the OS
    build_blast()
    receives = args.receive.split(",")
    for run in range(args.runs):
        for mode in args.modes.split(","):
            for receive in receives if run % 2 == 0 else receives[::-1]:  # fair order
                # Long enough to cover an in-process flush of the whole table, paced.
                args.lead = 1.0 + BEFORE
                args.seconds = args.lead + AFTER + args.names / 5_000
                print(one_run(mode, receive, args, payloads),
                      f"(load {os.getloadavg()[0]:.1f}, {time.strftime('%H:%M:%S')})",
                      flush=True)


if __name__ == "__main__":
    main()
