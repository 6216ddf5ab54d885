"""The daemon's RSS: idle after start, and at a fixed rate over 10,000 names through flushes.

A real ``python -m pystatsd`` (the configuration ``bench/side_by_side.py`` uses: one UDP
listener on loopback, no forwarder, 10 s flushes, the same receive buffer shim), then
``bench/loadgen.c`` offers each of ``--rates`` datagrams/s of ``--lines`` lines over ``--names``
names for ``--seconds`` (longer than a flush, so the peak includes one). Printed per rate: VmRSS
idle, VmRSS at the end, VmHWM (the peak), and the kernel's drops (a figure taken while losing
data is not the one the target speaks of). ``--repo`` runs other checkouts' code (e.g. the main
branch) under the same harness, for a before/after in one run; each rate gets a fresh daemon.

loadgen resends a pool of ``--pool`` distinct datagrams (its default, 4,096, gives each set ~8
members at 20 lines and, at one line per datagram, shows the daemon only ~3,400 of the 10,000
names); the default here is 40,000 datagrams at 20 lines (each set then sees ~300 distinct
members of loadgen's 1,000) and 60,000 at one line (~99.8% of the names).

``--interval`` sets the daemon's flush interval: what the parent holds depends on what one
interval puts in the table, so a rate R with interval I holds what R x I / 10 holds at the
default 10 s (the lossless rate of a quiet machine, emulated on a busy one).

loadgen's timers are milliseconds with 3 decimals (``123.456|ms``); ``--integer-timers`` sends
whole milliseconds (``123|ms``), what most clients send: a timer's samples take 4 bytes each
while every one of its interval is a float exactly, 8 once one is not (``new_samples`` in
``pystatsd/_linecache.pyx``), so the two mixes hold different memory.

``--breakdown`` samples /proc/PID/smaps each half second (``bench/rss_breakdown.py``: heap,
glibc's thread arenas, stacks, the ring, other anonymous, files) and prints it at the peak and
at the end. ``--probe`` also asks the daemon (``bench/rss_probe``, on its PYTHONPATH only) for
glibc's ``malloc_info``, pymalloc's stats and (with ``PYTHONTRACEMALLOC=1`` in the environment)
tracemalloc's largest sites, just before and just after the last flush of the run, into
``--probe-dir``.

    python bench/daemon_rss.py [--rates 6000,20000] [--lines 20] [--seconds 25] [--interval 10]
        [--repo /work/main --repo .] [--pool N] [--integer-timers] [--breakdown]
        [--probe --probe-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rss_breakdown  # noqa: E402
import side_by_side  # noqa: E402

PROBE = Path(__file__).resolve().parent / "rss_probe"
DEFAULT_POOL = {20: 40_000, 1: 60_000}
"""Datagrams in loadgen's pool, per lines per datagram (see the module's docstring)."""


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Samples the daemon's breakdown every half second while a step runs; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.peak: dict[str, float] = {"total": 0.0}
        self.series: list[tuple[float, float]] = []
        self.samples: list[dict[str, float]] = []

    def run(self) -> None:
        began = time.monotonic()
        while not self.done.wait(0.5):
            try:
                sample = rss_breakdown.breakdown(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.series.append((time.monotonic() - began, sample["total"]))
            self.samples.append(sample)
            if sample["total"] > self.peak["total"]:
                self.peak = sample

    def largest_jump(self) -> tuple[dict[str, float], dict[str, float]] | None:
        """The samples a second apart with the largest rise between them (a flush's)."""
        pairs = list(zip(self.samples, self.samples[2:], strict=False))
        if not pairs:
            return None
        return max(pairs, key=lambda pair: pair[1]["total"] - pair[0]["total"])


def probe(directory: Path, label: str, timeout: float = 10.0) -> None:
    """Ask the daemon's probe thread for its report named ``label`` and wait for it."""
    request = directory / "request"
    request.write_text(label)
    end = time.monotonic() + timeout
    while request.exists() and time.monotonic() < end:
        time.sleep(0.05)


def probe_around_flush(directory: Path, seconds: float, interval: float = 10.0) -> None:
    """Probe ~0.6 s before and ~2 s after the last flush deadline inside the next ``seconds``."""
    began = time.time()
    last = math.floor((began + seconds) / interval) * interval
    if last - 0.6 <= began:
        return
    time.sleep(last - 0.6 - began)
    probe(directory, "before-flush")
    time.sleep(max(0.0, last + 2.0 - time.time()))
    probe(directory, "after-flush")


def show(kinds: dict[str, float]) -> str:
    return ", ".join(f"{kind} {mb:.1f}" for kind, mb in kinds.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="6000", help="datagrams/s, comma-separated")
    parser.add_argument("--lines", type=int, default=20, help="lines per datagram")
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--rcvbuf", type=int, default=4 << 20)
    parser.add_argument("--repo", type=Path, action="append",
                        help="a checkout whose code runs (repeat for before/after)")
    parser.add_argument("--pool", type=int, help="loadgen's distinct datagrams (see above)")
    parser.add_argument("--interval", dest="flush_interval", type=int, default=10,
                        help="the daemon's flush_interval: at rate R and interval I the table "
                        "holds what R x I / 10 gives at the default 10 s")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--integer-timers", action="store_true",
                        help="timers in whole milliseconds (loadgen's default: 3 decimals)")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--probe-dir", type=Path, default=Path("rss-probe"))
    args = parser.parse_args()
    args.tags, args.statsite = True, None
    args.pool = args.pool or DEFAULT_POOL.get(args.lines, 40_000)
    repos = args.repo or [side_by_side.REPO]
    if args.integer_timers:
        os.environ["LOADGEN_INTEGER_TIMERS"] = "1"  # read by loadgen (bench/loadgen.c)
    pythonpath: tuple[str, ...] = ()
    if args.probe:
        args.probe_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PYSTATSD_RSS_PROBE"] = str(args.probe_dir.resolve())
        pythonpath = (str(PROBE),)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        loadgen, shim = side_by_side.build(workdir)  # this checkout's loadgen and shim
        for _ in range(args.runs):
            for rate in map(int, args.rates.split(",")):
                for repo in repos:
                    side_by_side.REPO = repo.resolve()  # the daemon's PYTHONPATH
                    run_one(args, workdir, loadgen, shim, rate, repo, pythonpath)


def run_one(args: argparse.Namespace, workdir: Path, loadgen: Path, shim: Path, rate: int,
            repo: Path, pythonpath: tuple[str, ...]) -> None:
    port = side_by_side.free_port()
    proc = side_by_side.start("pystatsd", port, workdir, shim, args, pythonpath)
    try:
        time.sleep(1.0)
        idle = rss_breakdown.breakdown(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        prober = None
        if args.probe:
            prober = threading.Thread(target=probe_around_flush,
                                      args=(args.probe_dir, args.seconds, args.flush_interval),
                                      daemon=True)
            prober.start()
        result = side_by_side.step(loadgen, proc, port, rate, args.seconds, args.lines, args)
        if prober is not None:
            prober.join()
        sampler.done.set()
        sampler.join()
        timer_samples = result["sent_rate"] * args.lines / 4 * args.flush_interval / (
            args.names / 4)
        print(f"{repo}: {rate:,} datagrams/s x {args.lines} lines, pool {args.pool:,} (sent "
              f"{result['sent_rate']:,.0f}/s; {args.flush_interval} s flushes: "
              f"~{timer_samples:,.0f} samples a timer an interval) for {args.seconds:g} s: idle "
              f"{idle['total']:.1f} MB; VmRSS "
              f"{status_mb(proc.pid, 'VmRSS'):.1f} MB at the end, VmHWM "
              f"{status_mb(proc.pid, 'VmHWM'):.1f} MB; loss {result['loss']:.3%}, "
              f"{result['cpu_core']:.0%} of a core (load {os.getloadavg()[0]:.1f})", flush=True)
        if args.breakdown:
            print(f"  idle (MB): {show(idle)}")
            print(f"  peak (MB): {show(sampler.peak)}")
            print(f"  end  (MB): {show(rss_breakdown.breakdown(proc.pid))}")
            jump = sampler.largest_jump()
            if jump is not None:
                print("  largest rise in a second (MB): " + ", ".join(
                    f"{kind} {jump[1][kind] - jump[0][kind]:+.1f}" for kind in jump[0]))
            print("  total by second: " + " ".join(f"{total:.0f}" for at, total in
                                                   sampler.series[1::2]), flush=True)
    finally:
        proc.terminate()
        proc.wait(20)


if __name__ == "__main__":
    main()
