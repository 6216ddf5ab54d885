"""Receive workers (``workers: N``): ingest rate and CPU per million lines of the real daemon
with 1 and 2 workers, the cost of the flush's merge per series, and the instructions a gauge
line costs with the workers' timed gauge cells.

    python bench/workers.py --quick          # 2 s steps: a few minutes
    python bench/workers.py                  # 5 s steps
    python bench/workers.py --merge          # merge cost per series only (no sockets)
    python bench/workers.py --instructions   # callgrind: per line, one process vs a worker

The live part runs ``python -m pystatsd`` with ``workers`` 1 and 2 (no forwarder; counts from
its admin socket) and bench/loadgen.c as the sender: ``--senders`` processes (each one socket,
so SO_REUSEPORT puts each on one worker; the shares are printed), 10,000 series, 20 lines per
datagram and 1. For each rate step: lines sent, lines aggregated (loss), and the CPU-seconds
the daemon and its workers used per million lines, from /proc (the daemon's own, its reaped
children's, and each live worker's). The sender's CPU is printed too: on a 2-core machine it
competes with the workers it feeds, so the highest lossless rate of 2 workers here is bounded
by what the sender and the other users leave, not by the workers; CPU per line is the figure
that carries over to a machine with free cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from pystatsd.admin import SOCKET_NAME, ask  # noqa: E402

LOSS_LIMIT = 0.001
NAMES = 10_000
TICKS = os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# -- the live daemon ------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """The daemon's CPU, its reaped children's (forked snapshots, dead workers) and each live
    child's (the workers)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return total
    for child in children:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(f) for f in fields[11:13]) / TICKS
    return total


class Daemon:
    def __init__(self, workers: int, workdir: Path, flush_interval: float) -> None:
        port = free_port()
        self.port = port
        self.state = workdir / f"state-{workers}"
        config = {"bind_address": "127.0.0.1", "bind_port": port, "workers": workers,
                  "flush_interval": flush_interval, "state_dir": str(self.state),
                  "forwarders": {}, "self_metrics": {"enabled": False},
                  "logging": {"level": "WARNING"}}
        path = workdir / f"workers-{workers}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen([sys.executable, "-m", "pystatsd", "-c", str(path)],
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.status()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the daemon did not start")

    def status(self) -> dict[str, Any]:
        return ask(self.state / SOCKET_NAME)

    def counters(self) -> tuple[int, list[int]]:
        status = self.status()
        per_worker = [w["counters"].get("received.datagrams", 0)
                      for w in (status.get("workers") or [])]
        return status["counters"].get("aggregated.samples", 0), per_worker

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def compile_loadgen(workdir: Path) -> Path:
    binary = workdir / "loadgen"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "loadgen.c")], check=True)
    return binary


def blast(loadgen: Path, port: int, rate: float, seconds: float, lines: int,
          senders: int) -> tuple[int, float]:
    """Lines sent by ``senders`` loadgens at ``rate`` datagrams/s in all; their CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen([str(loadgen), "127.0.0.1", str(port), str(rate / senders),
                               str(seconds), str(lines), str(NAMES), str(seed + 1)],
                              stdout=subprocess.PIPE, text=True) for seed in range(senders)]
    sent = sum(int(proc.communicate()[0].split()[1]) for proc in procs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sent, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def idle_cpu_rate(daemon: Daemon, seconds: float) -> float:
    """CPU-seconds per second with no traffic: the flushes of the carried gauges, the
    supervisor threads, the admin socket. Taken off each step's CPU."""
    before, began = cpu_seconds(daemon.proc.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(daemon.proc.pid) - before) / (time.monotonic() - began)


def step(daemon: Daemon, loadgen: Path, rate: float, seconds: float, lines: int,
         senders: int, flush_interval: float, idle: float) -> dict[str, Any]:
    aggregated_before, shares_before = daemon.counters()
    cpu_before, began = cpu_seconds(daemon.proc.pid), time.monotonic()
    sent, sender_cpu = blast(loadgen, daemon.port, rate, seconds, lines, senders)
    time.sleep(2 * flush_interval + 0.5)  # the flushes that publish the last counts
    cpu = cpu_seconds(daemon.proc.pid) - cpu_before - idle * (time.monotonic() - began)
    aggregated_after, shares_after = daemon.counters()
    aggregated = aggregated_after - aggregated_before
    shares = [a - b for a, b in zip(shares_after, shares_before or [0] * len(shares_after),
                                    strict=False)]
    return {"rate_lines": rate * lines, "sent": sent, "aggregated": aggregated,
            "loss": 1 - aggregated / sent if sent else 0.0,
            "cpu_per_million": cpu / (aggregated / 1e6) if aggregated else float("nan"),
            "sender_cpu_per_million": sender_cpu / (sent / 1e6) if sent else float("nan"),
            "shares": shares, "load": load()}


def live(args: argparse.Namespace) -> None:
    seconds = 2.0 if args.quick else 5.0
    flush_interval = 2.0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        loadgen = compile_loadgen(workdir)
        for lines, rates in ((20, [2_500, 5_000, 10_000, 20_000, 30_000]),
                             (1, [25_000, 50_000, 100_000, 150_000])):
            for workers in (1, 2):
                daemon = Daemon(workers, workdir, flush_interval)
                try:
                    best, best_found = 0.0, False
                    # warm: every series made (and the gauges carried) before the idle rate
                    blast(loadgen, daemon.port, rates[0], 1.0, lines, args.senders)
                    idle = idle_cpu_rate(daemon, 3 * flush_interval)
                    print(f"workers {workers}: idle {idle:.3f} CPU-s/s, {load()}", flush=True)
                    for rate in rates:
                        found = step(daemon, loadgen, rate, seconds, lines, args.senders,
                                     flush_interval, idle)
                        print(f"workers {workers}, {lines:>2} lines/datagram, "
                              f"{found['rate_lines']:>9,.0f} lines/s asked: sent "
                              f"{found['sent']:,}, loss {found['loss']:.2%}, daemon "
                              f"{found['cpu_per_million']:.2f} CPU-s/M lines, sender "
                              f"{found['sender_cpu_per_million']:.2f}, worker shares "
                              f"{found['shares']}, {found['load']}", flush=True)
                        if found["loss"] <= LOSS_LIMIT and not best_found:
                            best = found["rate_lines"]
                        else:
                            best_found = True
                    print(f"== workers {workers}, {lines} lines/datagram: highest lossless "
                          f"step {best:,.0f} lines/s", flush=True)
                finally:
                    daemon.stop()


# -- the merge, in process ------------------------------------------------------------------
def merge_cost(series: int, workers: int) -> None:
    """Per series: a worker's encoding (its GIL, its core) and the parent's decoding and merge
    (``TableMerge``: SeriesMerge per series, back to one table), with every series in every
    worker (the worst case: each merge is a real merge) and with each series in one."""
    from pystatsd.config import build_config
    from pystatsd.sample import Sample
    from pystatsd.selfstats import SelfStats
    from pystatsd.workers.gauge_order import TimedMetricMgr
    from pystatsd.workers.merge import TableMerge, encode_table

    config = build_config({"forwarders": {}})
    rng = random.Random(1)
    kinds = ("counter", "gauge", "timer", "set")
    for spread in ("each series in one worker", "every series in every worker"):
        managers = [TimedMetricMgr(config) for _ in range(workers)]
        for i in range(series):
            kind = kinds[i % 4]
            owners = managers if spread.startswith("every") else [managers[i % workers]]
            for manager in owners:
                for _ in range(5):
                    value: Any = (f"u{rng.randrange(100)}" if kind == "set"
                                  else float(rng.randrange(1000)))
                    manager.add(Sample(f"bench.s{i}", kind, value))
        began = time.process_time()
        encoded = [encode_table(m.swap(), {"received.lines": 1}, m.accuracy) for m in managers]
        encode = time.process_time() - began
        parent = TimedMetricMgr(config)
        began = time.process_time()
        merge = TableMerge(parent)
        for data in encoded:
            merge.add_encoded(data)
        merge.add_table(parent.swap())
        table = merge.table(parent, SelfStats())
        merged = time.process_time() - began
        parts = series * (workers if spread.startswith("every") else 1)
        print(f"merge, {series:,} series, {workers} workers, {spread}: encode "
              f"{encode / parts * 1e6:.2f} µs per worker series ({encode * 1000:.0f} ms), "
              f"decode+merge {merged / parts * 1e6:.2f} µs per worker series "
              f"({merged * 1000:.0f} ms), {sum(map(len, encoded)) / parts:.0f} bytes each; "
              f"{len(table)} series out; {load()}", flush=True)


# -- instructions per line ----------------------------------------------------------------
def count_only(lines: int, window: int, timed: bool, mix: str) -> None:
    """Under callgrind: warm up, then deliver ``window`` payloads through ``map``: to
    ``Pipeline.ingest`` under a lock as one process does (``Daemon._deliver``), or (``timed``)
    to a worker's ``deliver`` (timed gauge cells, the shared page written per payload).
    ``mix``: ``gauges`` (a third absolute, two thirds deltas) or ``loadgen`` (bench/loadgen.c's:
    counters, gauges, timers, sets)."""
    import mmap

    from pystatsd.aggregation import MetricMgr
    from pystatsd.config import build_config
    from pystatsd.ingest import Pipeline
    from pystatsd.selfstats import SelfStats
    from pystatsd.workers.gauge_order import TimedMetricMgr
    from pystatsd.workers.worker import Worker

    config = build_config({"forwarders": {}})
    stats = SelfStats()
    manager = (TimedMetricMgr if timed else MetricMgr)(config, stats)
    pipeline = Pipeline(config, manager, stats)
    lock = threading.Lock()

    def deliver(payload: bytes) -> None:  # Daemon._deliver: the ingest lock, then the pipeline
        with lock:
            pipeline.ingest(payload)

    if timed:
        worker = Worker(0, None, mmap.mmap(-1, mmap.PAGESIZE))  # type: ignore[arg-type]
        worker.manager, worker.pipeline = manager, pipeline  # what Worker.start builds
        deliver = worker.deliver  # type: ignore[assignment]
    warm = max(NAMES, 200_000 // lines)
    if mix == "loadgen":
        from bench.ingest_cpu import make_payloads

        payloads = make_payloads(warm + window, lines, NAMES)
    else:
        rng = random.Random(1)

        def line() -> bytes:
            sign = rng.choice([b"", b"+", b"-"])
            return b"bench.g%d:%s%d|g" % (rng.randrange(NAMES), sign, rng.randrange(1000))

        payloads = [b"\n".join(line() for _ in range(lines)) for _ in range(warm + window)]
    for payload in payloads[:warm]:
        deliver(payload)
    deque(map(deliver, payloads[warm:]), maxlen=0)


def instructions(lines: int, window: int, timed: bool, mix: str) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R", "valgrind", "--tool=callgrind",
             "--toggle-collect=map_next", f"--callgrind-out-file={workdir}/out",
             sys.executable, __file__, "--count-only", "--lines", str(lines),
             "--window", str(window), "--mix", mix, *(["--timed"] if timed else [])],
            capture_output=True, text=True, check=True, cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)})
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit("no 'Collected' line from callgrind:\n" + result.stderr[-2000:])
    return int(found.group(1)) / (window * lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s steps")
    parser.add_argument("--senders", type=int, default=8, help="loadgen processes (sockets)")
    parser.add_argument("--merge", action="store_true", help="only the merge cost per series")
    parser.add_argument("--instructions", action="store_true",
                        help="only instructions per gauge line, plain vs timed (valgrind)")
    parser.add_argument("--count-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lines", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--mix", default="loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="loadgen:20,loadgen:1,gauges:20",
                        help="with --instructions: mix:lines per payload, comma-separated")
    args = parser.parse_args()
    if args.count_only:
        count_only(args.lines, args.window, args.timed, args.mix)
        return
    if args.instructions:
        for case in args.cases.split(","):
            mix, lines_text = case.split(":")
            lines = int(lines_text)
            for timed in (False, True):
                per_line = instructions(lines, args.window, timed, mix)
                print(f"{mix} lines, {lines} per payload, "
                      f"{'a worker (deliver)' if timed else 'one process (_deliver)'}: "
                      f"{per_line:,.0f} instructions per line (callgrind)", flush=True)
        return
    for series in (10_000, 100_000):
        merge_cost(series, 2)
    if not args.merge:
        live(args)


if __name__ == "__main__":
    main()
