"""The longest pause in receiving while a real daemon flushes a large table (10,000 to
1,000,000 series), native receive and the Python loop, flush after flush.

Each size and receive runs in a process of its own (``PYSTATSD_UDP_RECEIVE`` set), a real
``pystatsd.daemon.Daemon``: its UDP listener (8 MiB receive buffer), its pipeline, a file
forwarder to /dev/null (so the snapshot child prepares every series' JSON line, and the
forwarder's thread writes them, as a real forwarder does) and ``Daemon.flush`` itself, 10 s
flushes. ``build/udp_blast`` (bench/udp_blast.c) offers ``--rate`` datagrams/s of one counter
line for the whole run. The table is filled with ``bench/snapshot.py``'s mix (counters, gauges,
timers, sets, half with tags) through the daemon's batch entry (``Pipeline.ingest_batch``
under the ingest lock, 256 payloads a hold, as the native receive delivers), from payloads
made once per size and kept in a file under build/ (mapped shared: ``fork()`` copies no page
tables for them, and they are not the daemon's heap). Then ``--flushes`` times: fill, wait
``BEFORE``, ``Daemon.flush()``, watch ``AFTER``; the first flush builds the carried state, so
the later ones are the steady state.

Per flush it reports:

- the longest gap in *draining the socket*: between two returns of ``recvmmsg`` on the native
  receive's drain thread (``Ring.longest_drain_gap``); for the Python loop, which drains and
  delivers in one thread, the longest gap between two deliveries; during the flush, in the
  second after it (the forwarder writing) and in the second before it (the machine's own);
- the longest gap in *delivering* (two deliveries, or batches, handed to the daemon), the same
  windows;
- datagrams lost during the flush and its second after: the kernel's drops for the socket
  (``/proc/net/udp``; on loopback every datagram not delivered is one), and the times the
  native ring was full (the drain then waits and the socket buffer takes the rest);
- the flush's duration, datagrams delivered per second during it, and the parent's RSS before
  it and its peak (``VmHWM``, reset before each flush through ``/proc/self/clear_refs``) over
  the flush and the second after.

The sender offers a batch every 0.5-1 ms, so gaps up to ~1 ms are the sender's.

    python bench/flush_pause.py [--names 10000,100000,300000,1000000] [--rate 100000]
                                [--receive native,python] [--flushes 3] [--runs 1]
                                [--modes forked-4k]
    python bench/flush_pause.py --bare-forks [--heap-mb 300] [--forks 8]  # fork() alone
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

BLAST = REPO / "build" / "udp_blast"
AFTER = 1.0
"""Seconds watched after the flush: the forwarder writes the snapshot there, and a collection
that its objects set off lands there."""
BEFORE = 1.0
"""Seconds watched before the flush: the machine's own gaps, to set beside those during it."""
SETTLE = 0.02
"""Seconds after a window before its drain gap is read: a stalled drain notes its gap only
when its next ``recvmmsg`` returns."""
HUGE_HEAP = {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
"""``--huge-heap``: every object from glibc's malloc (not pymalloc's 1 MiB arenas, which no
huge page can back), and malloc's heap advised for transparent huge pages (glibc >= 2.35)."""
FILL_BATCH = 256
"""Payloads per hold of the ingest lock while the bench fills the table (the native receive's
largest batch)."""


class PayloadFile:
    """The payloads of one size, made once (``snapshot.make_payloads``) and kept in build/ as
    one blob and its ends; read back through a shared mapping of the file."""

    def __init__(self, names: int, max_samples: int, max_members: int) -> None:
        stem = REPO / "build" / f"flush_pause-{names}-{max_samples}-{max_members}"
        blob_path, ends_path = stem.with_suffix(".blob"), stem.with_suffix(".ends")
        if not ends_path.exists():
            from snapshot import make_payloads  # noqa: PLC0415

            payloads = make_payloads(names, 10, max_samples, 20, max_members=max_members)
            ends, total = array("Q"), 0
            for payload in payloads:
                total += len(payload)
                ends.append(total)
            blob_path.parent.mkdir(exist_ok=True)
            with open(blob_path, "wb") as out:
                out.writelines(payloads)
            with open(ends_path, "wb") as out:  # last: its presence says the blob is whole
                ends.tofile(out)
            del payloads
        self.ends = array("Q")
        with open(ends_path, "rb") as source:
            self.ends.frombytes(source.read())
        with open(blob_path, "rb") as source:
            self.blob = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)

    def batches(self, size: int) -> Iterator[list[bytes]]:
        start, blob, ends = 0, self.blob, self.ends
        for at in range(0, len(ends), size):
            batch = []
            for end in ends[at:at + size]:
                batch.append(blob[start:end])
                start = end
            yield batch


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




class Gaps:
    """The longest gap between two calls of :meth:`note` per window (a gap still open when the
    window is read counts up to then), and the datagrams noted: kept as two floats, not a list
    of times (100k/s for minutes would be the parent's RSS)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.longest = 0.0
        self.count = 0

    def note(self, datagrams: int = 1) -> None:
        now = time.monotonic()
        if now - self.last > self.longest:
            self.longest = now - self.last
        self.last = now
        self.count += datagrams

    def take(self) -> float:
        """The longest gap since the last call."""
        gap = max(self.longest, time.monotonic() - self.last)
        self.longest = 0.0
        return gap


def timed(gaps: Gaps, deliver: Callable[..., None], batch: bool) -> Callable[..., None]:
    """``deliver`` noting each call first (a batch counts its datagrams)."""
    note = gaps.note
    if batch:
        def deliver_batch(payloads: list[bytes], *args: Any, **kwargs: Any) -> None:
            note(len(payloads))
            deliver(payloads, *args, **kwargs)
        return deliver_batch

    def deliver_one(payload: bytes, *args: Any, **kwargs: Any) -> None:
        note()
        deliver(payload, *args, **kwargs)
    return deliver_one


class PartTimes:
    """The longest call of each part of the flush that holds the GIL (or the ingest lock) in
    one piece: ``fork()`` (the kernel copies the page tables; the lock is held), the carried
    state's adoption (under the lock), freeing the finished table."""

    def __init__(self, daemon: Any) -> None:
        from pystatsd import forked_snapshot  # noqa: PLC0415

        self.longest: dict[str, float] = {}
        os.fork = self.wrap("fork", os.fork)  # type: ignore[assignment]
        daemon.manager.adopt_carried = self.wrap("adopt", daemon.manager.adopt_carried)
        forked_snapshot.release = self.wrap("release", forked_snapshot.release)
        forked_snapshot.release_dict = self.wrap("release carried", forked_snapshot.release_dict)

    def wrap(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        clock, longest = time.perf_counter, self.longest
        pid = os.getpid()

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            began = clock()
            result = call(*args, **kwargs)
            if os.getpid() == pid:  # not in the child
                longest[name] = max(longest.get(name, 0.0), clock() - began)
            return result
        return timed_call

    def __str__(self) -> str:
        return "; ".join(f"{name} {seconds * 1000:,.1f} ms"
                         for name, seconds in sorted(self.longest.items()))


IDLE = frozenset({"wait", "select", "serve_forever", "_run", "run", "get", "accept"})
"""Where a thread that holds no GIL waits: left out of ``--stalls``' notes."""


class StallWatch(threading.Thread):
    """``--stalls``: a thread that asks for the GIL every millisecond; when it waited longer
    than ``threshold``, it notes where every other thread stands as it gets the GIL back
    (the frame that just let go: the line after the long hold, or the call still in it)."""

    def __init__(self, threshold: float = 0.02) -> None:
        super().__init__(daemon=True, name="stall-watch")
        self.threshold = threshold
        self.armed = False
        self.stalls: list[tuple[float, str]] = []

    def run(self) -> None:
        import traceback  # noqa: PLC0415

        clock = time.monotonic
        last = clock()
        while True:
            time.sleep(0.001)
            now = clock()
            if self.armed and now - last > self.threshold:
                where = []
                names = {thread.ident: thread.name for thread in threading.enumerate()}
                for ident, frame in sys._current_frames().items():
                    top = traceback.extract_stack(frame)[-2:]
                    if ident == self.ident or top[-1].name in IDLE:
                        continue
                    where.append(f"{names.get(ident, '?')}: " + " < ".join(
                        f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(top)))
                self.stalls.append((now - last, " | ".join(where)))
            last = now

    def take(self, count: int = 4) -> str:
        worst = sorted(self.stalls, reverse=True)[:count]
        self.stalls = []
        return "".join(f"\n    stall {gap * 1000:.0f} ms: {where}" for gap, where in worst)


def raise_drain_thread() -> None:
    """``--drain-priority``: the native receive's drain thread (``udp-drain``) to SCHED_FIFO
    priority 1, ahead of every ordinary thread on the machine (an experiment: is a drain gap
    the scheduler's?)."""
    for task in Path("/proc/self/task").iterdir():
        if (task / "comm").read_text().strip() == "udp-drain":
            os.sched_setscheduler(int(task.name), os.SCHED_FIFO, os.sched_param(1))
            return
    raise RuntimeError("no udp-drain thread")


def huge_pages_mb() -> float:
    """The process's anonymous memory in transparent huge pages (after the flush's window:
    smaps_rollup walks the page tables)."""
    with open("/proc/self/smaps_rollup") as rollup:
        return next((int(line.split()[1]) / 1024 for line in rollup
                     if line.startswith("AnonHugePages:")), 0.0)


def status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(field))


def fill(daemon: Any, payloads: PayloadFile) -> float:
    """The whole table through the daemon's batch entry, a batch per hold of the lock (the
    listener's thread gets the lock and the GIL between two); its seconds."""
    began = time.monotonic()
    ingest, lock = daemon.pipeline.ingest_batch, daemon.lock
    gc.disable()  # a first fill of a million series spent 16% of it in full collections
    try:
        for batch in payloads.batches(FILL_BATCH):
            with lock:
                ingest(batch, _failed)
            daemon.last_loop = time.monotonic()  # the watchdog's sign of life
            time.sleep(0)  # the GIL to the listener's thread between two holds
    finally:
        gc.enable()
    return time.monotonic() - began


def _failed(payload: bytes) -> None:
    raise AssertionError(f"the bench's payload failed: {payload[:80]!r}")


def daemon_runs(mode: str, args: argparse.Namespace) -> None:
    """One daemon, ``--flushes`` flushes of a ``--names`` table (in the process the parent
    started with ``PYSTATSD_UDP_RECEIVE`` set)."""
    from snapshot import GcTimer  # noqa: PLC0415

    from pystatsd import forked_snapshot  # noqa: PLC0415
    from pystatsd.config import build_config  # noqa: PLC0415
    from pystatsd.daemon import Daemon  # noqa: PLC0415
    from pystatsd.listeners import UdpListener  # noqa: PLC0415

    receive = os.environ["PYSTATSD_UDP_RECEIVE"]
    huge_heap = os.environ.get("GLIBC_TUNABLES") == HUGE_HEAP["GLIBC_TUNABLES"]
    heap = ("free under lock " if args.free_under_lock else "") + (
        "huge heap " if huge_heap else "")
    payloads = PayloadFile(args.names, args.max_samples, args.max_members)
    config = build_config({
        "flush_interval": 10, "max_series": max(250_000, 2 * args.names),
        "listeners": [{"protocol": "udp", "address": "127.0.0.1", "port": 0}],
        "forwarders": {"file": {"path": "/dev/null"}},
        "state_dir": tempfile.mkdtemp(prefix="flush_pause-")})  # admin sockets of its own
    daemon = Daemon(config)
    delivered = Gaps()
    daemon._deliver = timed(delivered, daemon._deliver, batch=False)  # type: ignore[method-assign]
    daemon._deliver_batch = timed(delivered, daemon._deliver_batch,  # type: ignore[method-assign]
                                  batch=True)
    forked_snapshot.HUGE_PAGES = mode == "forked"  # forked-4k: none, as the daemon runs
    if mode == "local":
        forked_snapshot.AVAILABLE = False
    if args.free_under_lock:  # as before: the replaced carried state freed in the adoption
        adopt = daemon.manager.adopt_carried

        def adopt_and_free(*adopted: Any) -> None:
            replaced = daemon.manager.carried()
            adopt(*adopted)
            for carried in replaced:
                carried.clear()
        daemon.manager.adopt_carried = adopt_and_free  # type: ignore[method-assign,assignment]
    parts = PartTimes(daemon)
    daemon.start()
    blast: subprocess.Popen[bytes] | None = None
    try:
        listener = daemon.listeners[0]
        assert isinstance(listener, UdpListener)
        assert listener.receive == receive, f"{receive} receive is not available"
        ring = listener._ring
        if args.drain_priority:
            raise_drain_thread()
        port = listener.address[1]
        watch = DropWatch(port)
        watch.start()
        collections = GcTimer()
        stalls = StallWatch()
        if args.stalls:
            stalls.start()

        def gaps() -> tuple[float, float]:
            """The longest drain gap and delivery gap since the last call (one thread does
            both in the Python loop)."""
            delivery = delivered.take()
            return (float(ring.longest_drain_gap()) if ring is not None else delivery,
                    delivery)

        for flush in range(1, args.flushes + 1):
            filled = fill(daemon, payloads)  # the sender stopped: a fill is not measured
            series = daemon.manager.series_count()
            blast = subprocess.Popen([str(build_blast()), "127.0.0.1", str(port),
                                      str(args.rate), "86400", "1", "1000"],
                                     stdout=subprocess.DEVNULL)
            time.sleep(max(0.0, args.lead - BEFORE))
            gaps()
            time.sleep(BEFORE)
            drain_before, deliver_before = gaps()
            full_before = ring.ring_full if ring is not None else 0
            rss = status_mb("VmRSS:")
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM from now
            collections.armed, collections.longest = True, 0.0
            parts.longest.clear()
            stalls.take()
            stalls.armed = True
            count = delivered.count
            began = daemon.last_loop = time.monotonic()
            snapshot = daemon.flush()
            ended = time.monotonic()
            flushed = snapshot.series_count
            rate = (delivered.count - count) / (ended - began)
            time.sleep(SETTLE)
            drain_during, deliver_during = gaps()
            time.sleep(AFTER)  # the forwarder's thread writes the snapshot meanwhile
            drain_after, deliver_after = gaps()
            blast.kill()
            blast.wait()
            collections.armed = False
            stalls.armed = False
            del snapshot
            peak = status_mb("VmHWM:")
            dropped = watch.between(began, ended + AFTER)
            full = (ring.ring_full - full_before) if ring is not None else "-"
            huge = huge_pages_mb()
            print(f"{mode:9} {receive:6} {heap}flush {flush}: {series:,} series -> {flushed:,} "
                  f"(filled in {filled:.1f} s); flush {(ended - began) * 1000:,.0f} ms; RSS "
                  f"{rss:,.0f} MB, peak {peak:,.0f} MB, {huge:,.0f} MB in huge pages; drain gap "
                  f"during {drain_during * 1000:.1f} ms, after {drain_after * 1000:.1f} ms (before "
                  f"{drain_before * 1000:.1f} ms); delivery gap during "
                  f"{deliver_during * 1000:.1f} ms, after {deliver_after * 1000:.1f} ms "
                  f"(before {deliver_before * 1000:.1f} ms); delivered {rate:,.0f}/s during "
                  f"it; lost {dropped:,} (kernel drops, flush + {AFTER:.0f} s), ring full "
                  f"{full} times; longest collection {collections.longest * 1000:.0f} ms; "
                  f"{parts} (load {os.getloadavg()[0]:.1f}, {time.strftime('%H:%M:%S')})"
                  f"{stalls.take() if args.stalls else ''}", flush=True)
        watch.stopping = True
    finally:  # no daemon.stop(): its final flush would be one more of the whole table
        if blast is not None and blast.poll() is None:
            blast.kill()


def bare_forks(receive: str, args: argparse.Namespace) -> None:
    """``fork()`` alone, ``--forks`` times, with ``--heap-mb`` of small objects on the heap
    (what the page-table copy scales with), while the listener receives ``--rate``/s: each
    fork's duration beside the longest drain gap during it and in the 0.3 s before it."""
    from pystatsd.config import build_config  # noqa: PLC0415
    from pystatsd.listeners import UdpListener  # noqa: PLC0415
    from pystatsd.selfstats import SelfStats  # noqa: PLC0415

    heap = [{f"k{i}": [i, str(i)]} for i in range(args.heap_mb * 2500)]  # ~400 B each
    gc.freeze()
    rss = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status")
               if line.startswith("VmRSS:"))
    config = build_config({"forwarders": {}, "listeners": [
        {"protocol": "udp", "address": "127.0.0.1", "port": 0}]})
    delivered = Gaps()
    listener = UdpListener(config["listeners"][0], timed(delivered, lambda payload: None, False),
                           SelfStats(), native=receive == "native")
    listener.start()
    port = listener.address[1]
    blast = subprocess.Popen([str(build_blast()), "127.0.0.1", str(port), str(args.rate),
                              str(1.0 + args.forks * 0.8), "1", "1000"],
                             stdout=subprocess.PIPE, text=True)
    ring = listener._ring

    def drain_gap() -> float:
        return float(ring.longest_drain_gap()) if ring is not None else delivered.take()

    forks, gaps, before = [], [], []
    time.sleep(0.2)
    for _ in range(args.forks):
        drain_gap()
        time.sleep(0.3)
        before.append(drain_gap())
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forked = time.monotonic()
        time.sleep(SETTLE)  # a drain stalled by the fork records its gap when it resumes
        gaps.append(drain_gap())
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
    parser.add_argument("--names", default="100000",
                        help="series in the table, comma-separated for several sizes")
    parser.add_argument("--rate", type=int, default=100_000, help="datagrams/s offered")
    parser.add_argument("--modes", default="forked-4k",
                        help="forked (huge pages first), forked-4k (without, as the daemon "
                             "runs), local (no fork: in process, paced)")
    parser.add_argument("--receive", default="native,python",
                        help="the listener's receive: native (drain thread and ring), python")
    parser.add_argument("--flushes", type=int, default=3,
                        help="flushes per daemon, each after a fill (the first builds the "
                             "carried state: the later ones are the steady state)")
    parser.add_argument("--runs", type=int, default=1,
                        help="daemons per size, mode and receive (the order swapped each run)")
    parser.add_argument("--lead", type=float, default=2.0,
                        help="seconds of receiving alone after each fill, before the flush")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds one daemon's runs may take before it is killed")
    parser.add_argument("--huge-heap", action="store_true",
                        help="the daemon with PYTHONMALLOC=malloc and GLIBC_TUNABLES="
                             "glibc.malloc.hugetlb=1: its heap in transparent huge pages from "
                             "the start, so fork() copies a page-table entry per 2 MiB")
    parser.add_argument("--free-under-lock", action="store_true",
                        help="free the replaced carried state under the ingest lock, as before "
                             "(for a before/after in one run)")
    parser.add_argument("--stalls", action="store_true",
                        help="name what held the GIL in each wait over 20 ms during a flush")
    parser.add_argument("--drain-priority", action="store_true",
                        help="the native drain thread at SCHED_FIFO 1 (root; an experiment)")
    parser.add_argument("--max-members", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=100)
    parser.add_argument("--bare-forks", action="store_true",
                        help="fork() alone with a heap of --heap-mb, --forks times (fast)")
    parser.add_argument("--heap-mb", type=int, default=300)
    parser.add_argument("--forks", type=int, default=8)
    parser.add_argument("--daemon", help=argparse.SUPPRESS)  # a started daemon's mode
    args = parser.parse_args()
    build_blast()
    if args.daemon:
        args.names = int(args.names)
        daemon_runs(args.daemon, args)
        sys.stdout.flush()
        os._exit(0)  # no interpreter teardown of a table of a million series
    receives = args.receive.split(",")
    if args.bare_forks:
        for receive in receives:
            os.environ["PYSTATSD_UDP_RECEIVE"] = receive
            bare_forks(receive, args)
        return
    for names in args.names.split(","):
        PayloadFile(int(names), args.max_samples, args.max_members)  # made once, here
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)
        for run in range(args.runs):
            for mode in args.modes.split(","):
                for receive in receives if run % 2 == 0 else receives[::-1]:  # fair order
                    command = [sys.executable, __file__, "--daemon", mode, "--names", names,
                               "--rate", str(args.rate), "--flushes", str(args.flushes),
                               "--lead", str(args.lead), "--max-samples",
                               str(args.max_samples), "--max-members", str(args.max_members)]
                    command += [option for option, on in (
                        ("--drain-priority", args.drain_priority), ("--stalls", args.stalls),
                        ("--free-under-lock", args.free_under_lock)) if on]
                    uptime = subprocess.run(["uptime"], capture_output=True, text=True)
                    print(f"-- {names} series, {receive} receive, {mode} (uptime: "
                          f"{uptime.stdout.strip()})", flush=True)
                    try:
                        subprocess.run(command, check=False, timeout=args.timeout,
                                       env={**os.environ, "PYSTATSD_UDP_RECEIVE": receive,
                                            **(HUGE_HEAP if args.huge_heap else {})})
                    except subprocess.TimeoutExpired:
                        print(f"   timed out after {args.timeout:.0f} s", flush=True)


if __name__ == "__main__":
    main()
