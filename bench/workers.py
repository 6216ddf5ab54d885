"""Receive workers (``workers: N``): ingest rate and CPU per million lines of the real daemon
with 1 and 2 workers, the cost of the flush's merge per series, and the instructions a gauge
line costs with the workers' timed gauge cells.

    python bench/workers.py --quick          # 2 s steps: a few minutes
    python bench/workers.py                  # 5 s steps
    python bench/workers.py --merge          # merge cost per series only (no sockets)
    python bench/workers.py --instructions   # callgrind: per line, one process vs a worker
    python bench/workers.py --instructions --batch 64   # the same, as the native receive calls
    python bench/workers.py --quick --no-merge --compare ../before   # before/after, one run

The live part runs ``python -m pystatsd`` with ``workers`` 1 and 2 (no forwarder; counts from
its admin socket) and bench/loadgen.c as the sender: ``--senders`` processes (each one socket,
so SO_REUSEPORT puts each on one worker; the shares are printed), 10,000 series, 20 lines per
datagram and 1. For each rate step: lines sent, lines aggregated (loss), and the CPU-seconds
the daemon and its workers used per million lines, from /proc (the daemon's own, its reaped
children's, and each live worker's), then the same per process ("per process" lines: user and
system CPU-seconds per million lines, the idle rate taken off; context switches and system
calls per 1,000 lines and instructions per line, user and kernel, from ``perf stat
--per-thread`` on every thread of the daemon and its workers, where perf is installed and the
machine has the counters: a VM without a PMU has no instruction counts, only the software
events). The sender's CPU is printed too: on a 2-core machine it
competes with the workers it feeds, so the highest lossless rate of 2 workers here is bounded
by what the sender and the other users leave, not by the workers; CPU per line is the figure
that carries over to a machine with free cores.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from callgrind_count import instructions_in_map, warm_then_map  # noqa: E402
from senders import build_sender  # noqa: E402

from pystatsd.admin import SOCKET_NAME, ask  # noqa: E402

LOSS_LIMIT = 0.001
NAMES = 10_000
TICKS = os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# -- the live daemon ------------------------------------------------------------------------
def cpu_times(pid: int) -> tuple[float, float, float]:
    """User and system CPU-seconds of ``pid``, and those of its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0, 0.0, 0.0
    utime, stime, cutime, cstime = (int(f) / TICKS for f in fields[11:15])
    return utime, stime, cutime + cstime


def cpu_by_process(daemon: Daemon) -> dict[str, tuple[float, float]]:
    """(user, system) CPU-seconds by process: ``daemon``, ``reaped`` (its forked snapshots
    and dead workers) and ``worker i`` for each live worker."""
    user, system, reaped = cpu_times(daemon.proc.pid)
    found = {"daemon": (user, system), "reaped": (reaped, 0.0)}
    for index, pid in daemon.worker_pids().items():
        found[f"worker {index}"] = cpu_times(pid)[:2]
    return found


def cpu_seconds(daemon: Daemon) -> float:
    """The daemon's CPU, its reaped children's (forked snapshots, dead workers) and each live
    child's (the workers)."""
    return sum(user + system for user, system in cpu_by_process(daemon).values())


EVENTS = ("instructions:u", "instructions:k", "context-switches", "raw_syscalls:sys_enter")


class ThreadCounters:
    """``perf stat --per-thread`` on every thread of the daemon and its workers while a step
    runs (not the forked snapshots, which start later: their CPU is in ``reaped``)."""

    def __init__(self, processes: dict[str, int], workdir: Path) -> None:
        self.owner: dict[int, str] = {}
        for name, pid in processes.items():
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    self.owner[int(tid)] = name
            except FileNotFoundError:
                continue
        self.out = workdir / "perf-stat.csv"
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x,", "--per-thread", "-e", ",".join(EVENTS), "-o",
             str(self.out), "-p", ",".join(map(str, processes.values()))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> dict[str, dict[str, float]]:
        """Event -> count, by process name (events the machine lacks are left out)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        found: dict[str, dict[str, float]] = {}
        for row in self.out.read_text().splitlines():
            fields = row.split(",")
            if len(fields) < 4 or fields[3] not in EVENTS:
                continue
            name = self.owner.get(int(fields[0].rsplit("-", 1)[-1]))
            try:
                value = float(fields[1])
            except ValueError:  # <not counted> (an idle thread), <not supported> (no PMU)
                continue
            if name is not None:
                counts = found.setdefault(name, {})
                counts[fields[3]] = counts.get(fields[3], 0.0) + value
        return found


def perf_usable() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "stat", "-e", "context-switches", "--", "true"],
                           capture_output=True)
    return probe.returncode == 0


class Daemon:
    def __init__(self, workers: int, workdir: Path, flush_interval: float,
                 tree: Path = ROOT) -> None:
        port = free_port()
        self.port = port
        self.state = workdir / f"state-{workers}-{port}"
        config = {"bind_address": "127.0.0.1", "bind_port": port, "workers": workers,
                  "flush_interval": flush_interval, "state_dir": str(self.state),
                  "forwarders": {}, "self_metrics": {"enabled": False},
                  "logging": {"level": "WARNING"}}
        path = workdir / f"workers-{workers}-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen([sys.executable, "-m", "pystatsd", "-c", str(path)],
                                     cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
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

    def worker_pids(self) -> dict[int, int]:
        return {w["index"]: w["pid"] for w in (self.status().get("workers") or [])
                if w.get("alive")}

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


def idle_cpu_rates(daemon: Daemon, seconds: float) -> dict[str, float]:
    """CPU-seconds per second with no traffic, by process: the flushes of the carried gauges,
    the supervisor threads, the admin socket. Taken off each step's CPU."""
    before, began = cpu_by_process(daemon), time.monotonic()
    time.sleep(seconds)
    after, elapsed = cpu_by_process(daemon), time.monotonic() - began
    return {name: (sum(after[name]) - sum(before.get(name, (0.0, 0.0)))) / elapsed
            for name in after}


def step(daemon: Daemon, loadgen: Path, rate: float, seconds: float, lines: int,
         senders: int, flush_interval: float, idle: dict[str, float],
         workdir: Path) -> dict[str, Any]:
    aggregated_before, shares_before = daemon.counters()
    processes = {"daemon": daemon.proc.pid,
                 **{f"worker {i}": pid for i, pid in daemon.worker_pids().items()}}
    counters = ThreadCounters(processes, workdir) if perf_usable() else None
    cpu_before, began = cpu_by_process(daemon), time.monotonic()
    sent, sender_cpu = blast(loadgen, daemon.port, rate, seconds, lines, senders)
    settle(daemon, flush_interval)
    cpu_after, elapsed = cpu_by_process(daemon), time.monotonic() - began
    events = counters.stop() if counters is not None else {}
    aggregated_after, shares_after = daemon.counters()
    aggregated = aggregated_after - aggregated_before
    shares = [a - b for a, b in zip(shares_after, shares_before or [0] * len(shares_after),
                                    strict=False)]
    per_process: dict[str, dict[str, float]] = {}
    for name, (user, system) in cpu_after.items():
        user0, system0 = cpu_before.get(name, (0.0, 0.0))  # a restarted worker: from 0
        used = (user - user0) + (system - system0) - idle.get(name, 0.0) * elapsed
        found = per_process[name] = {
            "cpu_per_million": used / (aggregated / 1e6) if aggregated else float("nan"),
            "system_share": (system - system0) / max(user - user0 + system - system0, 1e-9)}
        for event, count in events.get(name, {}).items():
            found[event] = count / aggregated if aggregated else float("nan")
    total = sum(p["cpu_per_million"] for p in per_process.values())
    return {"rate_lines": rate * lines, "sent": sent, "aggregated": aggregated,
            "loss": 1 - aggregated / sent if sent else 0.0,
            "cpu_per_million": total,
            "sender_cpu_per_million": sender_cpu / (sent / 1e6) if sent else float("nan"),
            "shares": shares, "per_process": per_process, "load": load()}


def settle(daemon: Daemon, flush_interval: float, longest: float = 30.0) -> None:
    """Wait for the flushes that publish the step's last counts: two flush intervals, then
    until a flush interval passes with the count unchanged (on a loaded machine a flush can
    be late by seconds, and its counts would land in the next step)."""
    time.sleep(2 * flush_interval + 0.5)
    deadline = time.monotonic() + longest
    count = daemon.counters()[0]
    while time.monotonic() < deadline:
        time.sleep(flush_interval)
        count, before = daemon.counters()[0], count
        if count == before:
            return


def describe_processes(per_process: dict[str, dict[str, float]]) -> str:
    """One step's costs by process, per line aggregated."""
    parts = []
    for name, found in per_process.items():
        text = (f"{name} {found['cpu_per_million']:.2f} CPU-s/M "
                f"({found['system_share']:.0%} system)")
        if "context-switches" in found:
            text += f", {found['context-switches'] * 1000:.1f} switches/1k lines"
        if "raw_syscalls:sys_enter" in found:
            text += f", {found['raw_syscalls:sys_enter'] * 1000:.1f} syscalls/1k lines"
        if "instructions:u" in found:
            text += (f", {found['instructions:u']:,.0f} + "
                     f"{found.get('instructions:k', float('nan')):,.0f} instructions/line "
                     "(user + kernel)")
        parts.append(text)
    return "; ".join(parts)


def live(args: argparse.Namespace) -> None:
    """``--compare TREE``: each daemon is run from TREE (another checkout, its line cache
    built: "before") and then from this one ("after"), one after the other in one run."""
    seconds = 2.0 if args.quick else 5.0
    flush_interval = 2.0
    trees = [("", ROOT)] if args.compare is None else [
        ("before ", Path(args.compare).resolve()), ("after ", ROOT)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        loadgen = build_sender(ROOT / "build" / "loadgen", "bench/workers.py")
        for lines, rates in ((20, [2_500, 5_000, 10_000, 20_000, 30_000]),
                             (1, [25_000, 50_000, 100_000, 150_000])):
            if args.lines_only is not None and lines != args.lines_only:
                continue
            if args.rates:
                rates = [int(rate) for rate in args.rates.split(",")]
            for label, tree, workers in ((label, tree, workers) for workers in (1, 2)
                                         for label, tree in trees):
                daemon = Daemon(workers, workdir, flush_interval, tree)
                try:
                    best, best_found = 0.0, False
                    # warm: every series made (and the gauges carried) before the idle rate
                    blast(loadgen, daemon.port, rates[0], 1.0, lines, args.senders)
                    settle(daemon, flush_interval)  # its counts are not the first step's
                    idle = idle_cpu_rates(daemon, 3 * flush_interval)
                    print(f"{label}workers {workers}: idle {sum(idle.values()):.3f} CPU-s/s ("
                          + ", ".join(f"{name} {rate:.3f}" for name, rate in idle.items())
                          + f"), {load()}", flush=True)
                    for rate in rates:
                        found = step(daemon, loadgen, rate, seconds, lines, args.senders,
                                     flush_interval, idle, workdir)
                        print(f"{label}workers {workers}, {lines:>2} lines/datagram, "
                              f"{found['rate_lines']:>9,.0f} lines/s asked: sent "
                              f"{found['sent']:,}, loss {found['loss']:.2%}, daemon "
                              f"{found['cpu_per_million']:.2f} CPU-s/M lines, sender "
                              f"{found['sender_cpu_per_million']:.2f}, worker shares "
                              f"{found['shares']}, {found['load']}", flush=True)
                        print("    per process: " + describe_processes(found["per_process"]),
                              flush=True)
                        if found["loss"] <= LOSS_LIMIT and not best_found:
                            best = found["rate_lines"]
                        else:
                            best_found = True
                    print(f"== {label}workers {workers}, {lines} lines/datagram: highest lossless "
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
def count_only(lines: int, window: int, timed: bool, mix: str, batch: int = 0) -> None:
    """Under callgrind: warm up, then deliver ``window`` payloads (bench/callgrind_count.py's
    ``warm_then_map``): to ``Pipeline.ingest`` under a lock as one process does
    (``Daemon._deliver``), or (``timed``) to a worker's ``deliver`` on what ``Worker.start``
    builds (timed gauge cells, the shared page written per payload). With ``batch``, the
    native receive's way: batches of that many payloads to ``Pipeline.ingest_batch`` under
    the lock (``Daemon._deliver_batch``), or to the worker's ``deliver_batch``.
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
    manager = MetricMgr(config, stats)
    pipeline = Pipeline(config, manager, stats)
    lock = threading.Lock()

    def deliver(payload: bytes) -> None:  # Daemon._deliver: the ingest lock, then the pipeline
        with lock:
            pipeline.ingest(payload)

    if timed:
        worker = Worker(0, None, mmap.mmap(-1, mmap.PAGESIZE))  # type: ignore[arg-type]
        if hasattr(worker, "build"):
            worker.build(config)
        else:  # a tree before Worker.build (--instructions copied into it): what start built
            worker.manager = TimedMetricMgr(config, worker.stats)
            worker.pipeline = Pipeline(config, worker.manager, worker.stats)
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
    if not batch:
        warm_then_map(deliver, payloads, warm)
        return

    def failed(payload: bytes) -> None:
        raise AssertionError("a bench payload failed")

    def deliver_batch(chunk: list[bytes]) -> None:  # Daemon._deliver_batch
        with lock:
            pipeline.ingest_batch(chunk, failed)

    if timed:
        def deliver_batch(chunk: list[bytes]) -> None:
            worker.deliver_batch(chunk, failed)

    warm = -(-warm // batch) * batch
    batches = [payloads[at:at + batch] for at in range(0, len(payloads), batch)]
    warm_then_map(deliver_batch, batches, warm // batch)


def instructions(lines: int, window: int, timed: bool, mix: str, batch: int = 0) -> float:
    if batch:
        window = -(-window // batch) * batch
    collected = instructions_in_map(__file__, [
        "--count-only", "--lines", str(lines), "--window", str(window), "--mix", mix,
        *(["--timed"] if timed else []), *(["--batch", str(batch)] if batch else [])])
    return collected / (window * lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s steps")
    parser.add_argument("--senders", type=int, default=8, help="loadgen processes (sockets)")
    parser.add_argument("--merge", action="store_true", help="only the merge cost per series")
    parser.add_argument("--compare", metavar="TREE",
                        help="run each daemon from TREE too (before), then from this tree")
    parser.add_argument("--lines-only", type=int, choices=(1, 20),
                        help="only the steps of this many lines a datagram")
    parser.add_argument("--rates", help="with --lines-only: datagrams/s of each step, "
                        "comma-separated (instead of the usual ladder)")
    parser.add_argument("--no-merge", action="store_true",
                        help="skip the merge cost (live steps only)")
    parser.add_argument("--instructions", action="store_true",
                        help="only instructions per gauge line, plain vs timed (valgrind)")
    parser.add_argument("--count-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lines", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--mix", default="loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=0,
                        help="with --instructions: payloads per call, as the native receive "
                             "delivers them (0: one call per payload)")
    parser.add_argument("--cases", default="loadgen:20,loadgen:1,gauges:20",
                        help="with --instructions: mix:lines per payload, comma-separated")
    args = parser.parse_args()
    if args.count_only:
        count_only(args.lines, args.window, args.timed, args.mix, args.batch)
        return
    if args.instructions:
        for case in args.cases.split(","):
            mix, lines_text = case.split(":")
            lines = int(lines_text)
            for timed in (False, True):
                per_line = instructions(lines, args.window, timed, mix, args.batch)
                entry = (("a worker (deliver_batch)" if timed else "one process (_deliver_batch)")
                         if args.batch else
                         ("a worker (deliver)" if timed else "one process (_deliver)"))
                print(f"{mix} lines, {lines} per payload, {entry}"
                      f"{f' of {args.batch}' if args.batch else ''}: "
                      f"{per_line:,.0f} instructions per line (callgrind)", flush=True)
        return
    if not args.no_merge:
        for series in (10_000, 100_000):
            merge_cost(series, 2)
    if not args.merge:
        live(args)


if __name__ == "__main__":
    main()
