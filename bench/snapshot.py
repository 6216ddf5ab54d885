"""CPU cost of finishing (``MetricMgr.finish``) a realistic 10,000-series table: a snapshot.

The table is filled through ``Pipeline.ingest`` (the daemon's receive path) with 20-line
payloads: a quarter each counters, gauges, timers and sets, half of them with DogStatsD tags;
each timer gets 100-1000 samples (``--min-samples``/``--max-samples``) with 3-decimal values,
each set 10-1000 members, each counter and gauge a few lines. Then it times ``finish()``:
CPU time of the snapshotting thread (``time.thread_time``: the pauses don't count), wall time,
and, with ``--probe``, the longest wait of a second thread that only wants the GIL back (what
the receive thread sees; up to the 5 ms switch interval for Python code, longer for one long
C call such as a sort or a garbage collection). With ``--drain`` the snapshot runs on its own
thread while the main thread receives from a loopback UDP socket, filled 1,500 datagrams of
20 lines at a time, and ingests them under a lock as the daemon's listener does: the datagrams
per second it drains while snapshots run against the same without a snapshot (what decides
whether a flush overflows the socket buffer).

    python bench/snapshot.py [--runs 5] [--probe | --drain] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pystatsd.aggregation import IntervalTable, MetricMgr  # noqa: E402
from pystatsd.config import build_config  # noqa: E402
from pystatsd.ingest import Pipeline  # noqa: E402
from pystatsd.selfstats import SelfStats  # noqa: E402
from pystatsd.snapshot import SeriesStats  # noqa: E402


def make_payloads(names: int, min_samples: int, max_samples: int, lines: int,
                  seed: int = 1, max_members: int = 1000) -> list[bytes]:
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(names):
        tags = "|#region:eu-1,shard:7" if i & 1 else ""
        kind = i % 4
        if kind == 0:
            out.extend(f"bench.svc{i % 100}.requests{i}:1|c{tags}"
                       for _ in range(rng.randint(1, 40)))
        elif kind == 1:
            out.extend(f"bench.svc{i % 100}.queue{i}:{rng.randrange(1000)}|g{tags}"
                       for _ in range(rng.randint(1, 20)))
        elif kind == 2:
            out.extend(f"bench.svc{i % 100}.latency{i}:{rng.randrange(500)}."
                       f"{rng.randrange(1000):03d}|ms{tags}"
                       for _ in range(rng.randint(min_samples, max_samples)))
        else:
            members = rng.randint(10, max_members)
            out.extend(f"bench.svc{i % 100}.users{i}:u{m}|s{tags}" for m in range(members))
    rng.shuffle(out)
    return ["\n".join(out[at:at + lines]).encode() for at in range(0, len(out), lines)]


def probe_gaps(done: threading.Event, gaps: list[float]) -> None:
    """Take the GIL back as often as possible; keep the longest wait."""
    clock = time.perf_counter
    last = clock()
    longest = 0.0
    while not done.is_set():
        time.sleep(0)  # gives the GIL up, as a receive does
        now = clock()
        longest = max(longest, now - last)
        last = now
    gaps.append(longest)


class GcTimer:
    """The longest garbage collection while armed (gc.callbacks)."""

    def __init__(self) -> None:
        self.armed = False
        self.began = 0.0
        self.longest = 0.0
        self.generation = -1
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.began = time.perf_counter()
        elif self.armed and time.perf_counter() - self.began > self.longest:
            self.longest = time.perf_counter() - self.began
            self.generation = info["generation"]


class Drainer:
    """Fill a loopback UDP socket, then receive and ingest until it is empty, as the listener
    does (one receive per datagram, each giving the GIL up, ingest under a lock)."""

    FILL = 1500  # ~3.5 MB of socket buffer at 20 lines: within the 8 MB the kernel grants

    def __init__(self, pipeline: Pipeline, payloads: list[bytes]) -> None:
        self.pipeline = pipeline
        self.payloads = payloads
        self.lock = threading.Lock()
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.receiver.bind(("127.0.0.1", 0))
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.at = 0
        self.datagrams = 0
        self.seconds = 0.0
        self.lost = 0

    def cycle(self) -> None:
        address = self.receiver.getsockname()
        send = self.sender.sendto
        start = self.at
        batch = self.payloads[start:start + self.FILL]
        if len(batch) < self.FILL:
            self.at, batch = 0, self.payloads[:self.FILL]
        else:
            self.at = start + self.FILL
        for payload in batch:
            send(payload, address)
        recv, ingest, lock = self.receiver.recv, self.pipeline.ingest, self.lock
        received = 0
        began = time.perf_counter()
        while True:
            try:
                payload = recv(65535, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            received += 1
            with lock:
                ingest(payload)
        self.seconds += time.perf_counter() - began
        self.datagrams += received
        self.lost += len(batch) - received

    def take_rate(self) -> float:
        rate = self.datagrams / self.seconds
        self.datagrams, self.seconds = 0, 0.0
        return rate

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--min-samples", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--probe", action="store_true", help="measure the longest GIL wait")
    parser.add_argument("--drain", action="store_true",
                        help="receive from a UDP socket while the snapshot runs")
    parser.add_argument("--profile", action="store_true", help="cProfile one snapshot")
    args = parser.parse_args()

    config = build_config({"forwarders": {}})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    payloads = make_payloads(args.names, args.min_samples, args.max_samples, 20)
    samples = sum(payload.count(b"\n") + 1 for payload in payloads)
    gc.freeze()  # the test payloads are no part of a daemon's heap (which freezes after start-up)

    def timed_snapshot(table: IntervalTable) -> tuple[list[SeriesStats], float, float]:
        cpu, wall = time.thread_time(), time.perf_counter()
        series = manager.finish(table, 10.0)
        return series, time.thread_time() - cpu, time.perf_counter() - wall

    def snapshot_into(table: IntervalTable, finished: list[Any]) -> None:
        finished.append(timed_snapshot(table))

    drainer = Drainer(pipeline, payloads) if args.drain else None
    idle_rates: list[float] = []
    busy_rates: list[float] = []
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    gaps: list[float] = []
    collections = GcTimer()
    for run in range(args.runs + 1):  # run 0 warms the line cache and the carried gauges
        for payload in payloads:
            pipeline.ingest(payload)
        table = manager.swap()
        done = threading.Event()
        probe = threading.Thread(target=probe_gaps, args=(done, gaps))
        if args.probe and run:
            probe.start()
        profiler = cProfile.Profile() if args.profile and run == 1 else None
        if profiler is not None:
            profiler.enable()
        collections.armed = bool(run)
        if drainer is not None and run:
            for _ in range(10):  # the same traffic with no snapshot running
                drainer.cycle()
            idle_rates.append(drainer.take_rate())
            finished: list[Any] = []
            worker = threading.Thread(target=snapshot_into, args=(table, finished))
            worker.start()
            while worker.is_alive():
                drainer.cycle()
            worker.join()
            busy_rates.append(drainer.take_rate())
            snapshot, cpu, wall = finished[0]
        else:
            snapshot, cpu, wall = timed_snapshot(table)
        collections.armed = False
        if profiler is not None:
            profiler.disable()
        done.set()
        if probe.is_alive():
            probe.join()
        if run:
            cpu_ms.append(cpu * 1000)
            wall_ms.append(wall * 1000)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(14)
    print(f"{len(snapshot)} series, {samples:,} lines per interval; "
          f"snapshot CPU ms: median {statistics.median(cpu_ms):.0f}, min {min(cpu_ms):.0f}; "
          f"wall ms: median {statistics.median(wall_ms):.0f}"
          + (f"; longest GIL wait of a probe thread: {max(gaps) * 1000:.1f} ms" if gaps else "")
          + f"; longest GC during snapshots: {collections.longest * 1000:.1f} ms"
          f" (generation {collections.generation})")
    if drainer is not None:
        drainer.close()
        print(f"received and ingested: {statistics.median(idle_rates):,.0f} datagrams/s without a "
              f"snapshot, {statistics.median(busy_rates):,.0f} datagrams/s while one runs "
              f"(medians; {drainer.lost} lost in the socket)")


if __name__ == "__main__":
    main()
