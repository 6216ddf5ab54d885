"""The longest pause in receiving while a flush finishes a large table: forked vs in process.

One process, as the daemon: a receive thread takes datagrams from a loopback UDP socket (8 MiB
buffer) and ingests each under the ingest lock; the main thread fills a table of ``--names``
series (``bench/snapshot.py``'s mix: counters, gauges, timers, sets, half with tags), then,
while ``build/udp_blast`` (bench/udp_blast.c) offers ``--rate`` datagrams/s of one counter line,
swaps the table and finishes it either in process (``MetricMgr.finish``, paced) or in a forked
child (``pystatsd.forked_snapshot``), then frees it, as ``Daemon.flush`` does. The receive
thread notes the time of every datagram: the longest gap between two during the flush is the
pause the flush caused (the sender offers a batch every 0.5-1 ms, so gaps up to ~1 ms are the
sender's), then the longest in the second after it (the snapshot kept alive, as forwarders
do: a garbage collection its objects set off lands there), set beside the longest gap in a
window as long as the flush just before it (the machine's own noise). Lost = offered - received.

    python bench/flush_pause.py [--names 100000] [--rate 100000] [--modes forked,forked-4k,local]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import socket
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
from pystatsd.selfstats import SelfStats  # noqa: E402

BLAST = REPO / "build" / "udp_blast"
AFTER = 1.0
"""Seconds watched after the flush: a collection that the snapshot's objects set off lands
there."""


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


class Receiver(threading.Thread):
    def __init__(self, pipeline: Pipeline, lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.pipeline, self.lock = pipeline, lock
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.times: list[float] = []
        self.stopping = False

    def run(self) -> None:
        recv, ingest, lock, clock = self.sock.recv, self.pipeline.ingest, self.lock, time.monotonic
        note = self.times.append
        while not self.stopping:
            try:
                payload = recv(65535)
            except TimeoutError:
                continue
            note(clock())
            with lock:
                ingest(payload)


def longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    return max((b - a for a, b in zip(inside, inside[1:], strict=False)), default=end - start)


def one_run(mode: str, args: argparse.Namespace, payloads: SharedPayloads) -> str:
    config = build_config({"forwarders": {}})
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
    receiver = Receiver(pipeline, lock)
    receiver.start()
    port = receiver.sock.getsockname()[1]
    watch = DropWatch(port)
    watch.start()
    blast = subprocess.Popen([str(build_blast()), "127.0.0.1", str(port), str(args.rate),
                              str(args.seconds), "1", "1000"], stdout=subprocess.PIPE, text=True)
    time.sleep(args.lead)
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
    time.sleep(AFTER)  # the snapshot still alive, as while forwarders encode it
    del snapshot
    collections.armed = False
    gc.callbacks.remove(collections.callback)
    sent_text, _ = blast.communicate()
    time.sleep(0.3)
    receiver.stopping = watch.stopping = True
    receiver.join()
    watch.join()
    receiver.sock.close()
    sent = int(sent_text.split()[0])
    received = len(receiver.times)
    window = ended - began
    during = longest_gap(receiver.times, began, ended)
    after = longest_gap(receiver.times, ended, ended + AFTER)
    before = longest_gap(receiver.times, began - min(window, args.lead - 0.2), began)
    rate = sum(began <= t <= ended for t in receiver.times) / window
    return (f"{mode:9} {series:,} series -> {flushed:,} (RSS {rss:.0f} MB): "
            f"flush {window * 1000:,.0f} ms; "
            f"longest receive gap during it {during * 1000:.1f} ms, in the {AFTER:.0f} s after "
            f"it {after * 1000:.1f} ms (before it {before * 1000:.1f} ms); "
            f"received {rate:,.0f} datagrams/s during it; "
            f"lost {sent - received:,} of {sent:,} ({watch.between(began, ended):,} "
            f"dropped by the kernel during the flush); longest garbage collection "
            f"{collections.longest * 1000:.0f} ms (generation {collections.generation})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=100_000, help="datagrams/s offered")
    parser.add_argument("--modes", default="forked,forked-4k,local",
                        help="forked (huge pages first), forked-4k (without), local")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--max-members", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=100)
    args = parser.parse_args()
    payloads = SharedPayloads(make_payloads(args.names, 10, args.max_samples, 20,
                                            max_members=args.max_members))
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # the list's memory back to the OS
    build_blast()
    for _ in range(args.runs):
        for mode in args.modes.split(","):
            # Long enough to cover an in-process flush of the whole table, paced.
            args.lead = 1.0
            args.seconds = 1.0 + AFTER + args.names / 5_000
            print(one_run(mode, args, payloads), f"(load {os.getloadavg()[0]:.1f})",
                  flush=True)


if __name__ == "__main__":
    main()
