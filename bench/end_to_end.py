"""The main job under load: statsd over loopback UDP -> one daemon -> a flush of 100,000 series
per interval to Kafka, against the same daemon flushing to a file. Reports each forwarder's
highest lossless ingest rate and the flush-to-acknowledged time.

Each bisection step starts a fresh daemon (``workers: N`` when asked, the Kafka forwarder in
``json`` format on a new topic of the embedded Tansu broker, or the file forwarder on a new
file; self-metrics off, so every record is a client series) and sends ``--names`` counter
series (bench/udp_blast.c: ``bench.app<i>.requests.count:1|c``, the names in turn, 20 lines a
datagram) at a fixed datagram rate for ``--seconds``, then stops the daemon (its last flush
is delivered before it exits) and reads every record back: from the topic with
forwarders/kafka/reading.py, or from the file. A step is lossless when both hold:

- the kernel dropped at most 0.1% of the datagrams at the daemon's socket (``/proc/net/udp``);
- what reached the backend accounts for at most 0.1% less than was sent: the counts of every
  record add up to the lines sent (each line counts 1), and every interval that lay wholly
  inside the sending has a record for every one of the ``--names`` series.

Flush-to-acknowledged: a thread asks the daemon's console (``state_dir/console.sock``,
``stats``) every 50 ms for the forwarder's counters: a flush is handed over when
``submitted`` grows, and done when the Kafka forwarder's ``delivered`` (its delivery
callbacks: the broker acknowledged, acks=all) or the file forwarder's ``sent`` (written)
reaches it; the time from the interval's aligned end to then is reported for each flush of all
``--names`` series (median and max over the best lossless step; 50 ms resolution).

CPU is the daemon's own and its reaped children's (the forked snapshots) user + system time
over the step. The sender and the broker share the 2 cores with the daemon: the figures are
for this machine, with its load (``os.getloadavg()``) printed beside each.

    PYTHONPATH=. python bench/end_to_end.py [--quick] [--forwarders kafka,file] [--workers N]

``--instructions`` instead counts, under ``valgrind --tool=callgrind``, the CPU instructions
each forwarder's ``send()`` of one flush spends per series (the work a flush takes from the
receive thread's GIL), a figure the machine's load does not move:

    PYTHONPATH=. python bench/end_to_end.py --instructions [--series 20000] [--checkout DIR]

and (in the same run, for this checkout and for each ``--checkout``) the parent's share of a
whole flush to each forwarder: the forked snapshot's frames received (and, where the forwarder
prepares in the child, its prepared frames) plus ``send`` or ``send_prepared``, everything the
daemon's own process does for that flush but Kafka's delivery reports (a closed port: none
come; they cost the same on every checkout).

``--only-flush`` counts only those whole flushes.

``--forwarders`` takes ``kafka@DIR`` (or ``file@DIR``) too: that forwarder with the daemon of
another checkout (its own ``pystatsd`` and ``forwarders``, e.g. main's, extracted with
``git archive``), in the same interleaved bisection: before and after in one run.

``--workers N`` writes ``workers: N`` into the daemon's config. A daemon without that key
(before receive workers) is run without it for N = 1, and the run stops with the daemon's own
line for N > 1.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml

# The daemon's code: this checkout's, or another's for --instructions --checkout DIR.
CODE = Path(os.environ.get("E2E_CHECKOUT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(CODE))

from forwarders.kafka.embedded_broker import EmbeddedBroker  # noqa: E402
from forwarders.kafka.reading import read_topic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MAX_LOSS = 0.001
LINES_PER_DATAGRAM = 20
TICKS = os.sysconf("SC_CLK_TCK")
POLL = 0.05


class DaemonRefused(SystemExit):
    """The daemon would not start with this config: its own line says why."""


def build(workdir: Path) -> Path:
    blast = workdir / "udp_blast"
    subprocess.run(["gcc", "-O2", "-o", str(blast), str(REPO / "bench" / "udp_blast.c")],
                   check=True)
    return blast


def free_udp_port() -> int:
    """A port free for UDP and TCP both (the daemon binds its TCP listener on it too)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def socket_row(port: int) -> list[str] | None:
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted:
            return fields
    return None


def drops(port: int) -> int:
    """Datagrams the kernel dropped at every socket bound to the port (one per worker)."""
    wanted = f"0100007F:{port:04X}"
    return sum(int(line.split()[-1]) for line in Path("/proc/net/udp").read_text()
               .splitlines()[1:] if line.split()[1] == wanted)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / TICKS  # utime stime cutime cstime


class Setup:
    """What every step of one bisection shares."""

    def __init__(self, args: argparse.Namespace, workdir: Path, bootstrap: str,
                 forwarder: str) -> None:
        self.label = forwarder
        forwarder, _, checkout = forwarder.partition("@")
        self.args, self.workdir, self.bootstrap, self.forwarder = args, workdir, bootstrap, \
            forwarder
        self.repo = Path(checkout).resolve() if checkout else REPO
        self.env = {**os.environ, "PYTHONPATH": str(self.repo)}
        self.with_workers_key = True

    def config(self, port: int, state: Path, target: str) -> dict[str, Any]:
        if self.forwarder == "kafka":
            section: dict[str, Any] = {"type": "kafka", "kafka_broker": self.bootstrap,
                                       "kafka_topic": target, "format": "json"}
        else:
            section = {"type": "file", "path": target, "max_bytes": 0}
        config: dict[str, Any] = {
            "bind_address": "127.0.0.1", "bind_port": port,
            "flush_interval": self.args.interval, "state_dir": str(state),
            "self_metrics": {"enabled": False}, "forwarders": {self.forwarder: section},
            "logging": {"level": "WARNING"}}
        if self.with_workers_key:
            config["workers"] = self.args.workers
        return config

    def check(self) -> None:
        """Refuse cleanly (the daemon's own line) a config the daemon will not start with;
        ``workers: 1`` on a daemon that has no such key yet is today's one process."""
        path = self.workdir / "check.yaml"
        for _ in range(2):
            target = str(self.workdir / "check.jsonl") if self.forwarder == "file" else "t"
            path.write_text(yaml.safe_dump(self.config(free_udp_port(), self.workdir / "check",
                                                       target)))
            result = subprocess.run([sys.executable, "-m", "pystatsd", "--check-config",
                                     str(path)], capture_output=True, text=True,
                                    cwd=self.repo, env=self.env, timeout=60)
            if result.returncode == 0:
                return
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            line = said[-1] if said else f"exit status {result.returncode}"
            if self.with_workers_key and "workers" in line and self.args.workers == 1:
                print(f"  this daemon has no `workers` key ({line.strip()}): one process, "
                      "as workers: 1 means", flush=True)
                self.with_workers_key = False
                continue
            raise DaemonRefused(f"the daemon refuses the config: {line.strip()}")


class CounterWatch(threading.Thread):
    """Polls the daemon's console for one forwarder's counters; records, per flush, the time
    from the interval's aligned end to the flush being acknowledged (Kafka) or written."""

    def __init__(self, sock_path: Path, forwarder: str, interval: float, names: int) -> None:
        super().__init__(daemon=True)
        self.sock_path, self.forwarder, self.interval = sock_path, forwarder, interval
        self.names = names
        self.done_key = "delivered" if forwarder == "kafka" else "sent"
        self.flush_seconds: list[float] = []
        self.stop_event = threading.Event()

    def counters(self) -> dict[str, float]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(str(self.sock_path))
            conn.sendall(b"stats\n")
            data = b""
            while not data.endswith(b"END\n\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"quit\n")
        prefix = f"{self.forwarder}."
        out = {}
        for line in data.decode().splitlines():
            if line.startswith(prefix) and ": " in line:
                key, value = line[len(prefix):].split(": ", 1)
                out[key] = float(value)
        return out

    def run(self) -> None:
        pending: tuple[float, float] | None = None  # (target, interval end)
        seen_submitted = 0.0
        while not self.stop_event.wait(POLL):
            try:
                counters = self.counters()
            except OSError:
                continue  # not listening yet, or going away
            now = time.time()
            submitted = counters.get("submitted", 0.0)
            if submitted > seen_submitted:
                # Timed: flushes of every series (not the first, partial interval's).
                if submitted - seen_submitted >= self.names:
                    pending = (submitted, math.floor(now / self.interval) * self.interval)
                seen_submitted = submitted
            if pending is not None and counters.get(self.done_key, 0.0) >= pending[0]:
                self.flush_seconds.append(time.time() - pending[1])
                pending = None


def read_back(setup: Setup, target: str) -> list[dict[str, Any]]:
    if setup.forwarder == "kafka":
        return [orjson.loads(m.value) for m in read_topic(setup.bootstrap, target, timeout=120,
                                                           idle=3.0)]
    return [orjson.loads(line) for line in Path(target).read_bytes().splitlines() if line]


def step(setup: Setup, blast: Path, rate: int, seconds: float) -> dict[str, Any]:
    args = setup.args
    port = free_udp_port()
    tag = uuid.uuid4().hex[:8]
    state = setup.workdir / f"state-{tag}"
    target = (f"e2e-{tag}" if setup.forwarder == "kafka"
              else str(setup.workdir / f"out-{tag}.jsonl"))
    config = setup.workdir / f"{tag}.yaml"
    config.write_text(yaml.safe_dump(setup.config(port, state, target)))
    log = (setup.workdir / f"{tag}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "pystatsd", "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=setup.repo,
                            env=setup.env)
    try:
        deadline = time.monotonic() + 30
        while socket_row(port) is None or not (state / "console.sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: "
                                 f"{(setup.workdir / f'{tag}.log').read_text()[-2000:]}")
            time.sleep(0.1)
        watch = CounterWatch(state / "console.sock", setup.forwarder, args.interval,
                             args.names)
        watch.start()
        dropped, cpu = drops(port), cpu_seconds(proc.pid)
        began_wall, began = time.time(), time.monotonic()
        sent = int(subprocess.run([str(blast), "127.0.0.1", str(port), str(rate), str(seconds),
                                   str(LINES_PER_DATAGRAM), str(args.names)], check=True,
                                  capture_output=True, text=True).stdout.split()[0])
        ended_wall = time.time()
        drain_end = time.monotonic() + 5
        row = socket_row(port)
        while row is not None and int(row[4].split(":")[1], 16) and \
                time.monotonic() < drain_end:
            time.sleep(0.05)
            row = socket_row(port)
        kernel_dropped = drops(port) - dropped
        used = cpu_seconds(proc.pid) - cpu
        wall = time.monotonic() - began
        load = os.getloadavg()[0]
        proc.send_signal(signal.SIGTERM)  # the last interval is flushed and delivered first
        proc.wait(120)
        watch.stop_event.set()
        watch.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    records = read_back(setup, target)
    total = sum(r["stats"]["count"] for r in records if r.get("type") == "counter")
    per_interval: dict[float, int] = {}
    for record in records:
        start = record["interval_start"]
        per_interval[start] = per_interval.get(start, 0) + 1
    # Intervals wholly inside the sending (the daemon's intervals are aligned to the clock).
    full = [start for start in per_interval
            if start >= began_wall and start + args.interval <= ended_wall]
    first_full = math.ceil(began_wall / args.interval) * args.interval
    expected_full = max(0, math.floor((ended_wall - first_full) / args.interval))
    short = sum(args.names - per_interval[start] for start in full) + \
        (expected_full - len(full)) * args.names
    datagrams = sent // LINES_PER_DATAGRAM
    kernel_loss = kernel_dropped / max(datagrams, 1)
    delivered_loss = 1 - total / max(sent, 1)
    series_loss = short / max(expected_full * args.names, 1)
    return {"rate": rate, "lines": sent, "kernel_loss": kernel_loss,
            "delivered_loss": delivered_loss, "series_loss": series_loss,
            "full_intervals": expected_full,
            "ok": max(kernel_loss, delivered_loss, series_loss) <= MAX_LOSS,
            "cpu_core": used / wall, "us_per_line": used / max(sent, 1) * 1e6,
            "flush_seconds": watch.flush_seconds, "load": load}


class Bisection:
    """One forwarder's search for its highest lossless rate, a step at a time, so that the
    forwarders' steps alternate and see the machine's load alike."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.low, self.high = setup.args.low, setup.args.high
        self.best: dict[str, Any] | None = None

    def step(self, blast: Path) -> None:
        rate = (self.low + self.high) // 2
        result = step(self.setup, blast, rate, self.setup.args.seconds)
        flushes = result["flush_seconds"]
        print(f"  {self.setup.label:5} {rate:>7,} dgram/s = "
              f"{rate * LINES_PER_DATAGRAM:>9,} lines/s {'ok  ' if result['ok'] else 'LOSS'} "
              f"kernel {result['kernel_loss']:.3%} delivered {result['delivered_loss']:.3%} "
              f"series {result['series_loss']:.3%} ({result['full_intervals']} full intervals) "
              f"cpu {result['cpu_core']:.0%} {result['us_per_line']:.2f} us/line flush->done "
              f"{', '.join(f'{s:.2f}' for s in flushes)} s load {result['load']:.1f}",
              flush=True)
        if result["ok"]:
            self.best, self.low = result, rate
        else:
            self.high = rate


def count_send(forwarder: str, series: int, part: str) -> None:
    """The workload under callgrind: one flush of ``series`` counters, sent once inside
    ``map()`` so that ``--toggle-collect=map_next`` counts the send and nothing else. The Kafka
    forwarder's broker is a closed port: ``produce()`` only queues, as it does before any
    acknowledgement, and the process leaves before librdkafka would give up. ``part``
    ``encode`` or ``produce`` counts one half of the Kafka forwarder's send."""
    from forwarders.base import ForwarderContext
    from forwarders.file import FileForwarder
    from forwarders.kafka import KafkaForwarder
    from forwarders.kafka.embedded_broker import free_port
    from pystatsd.config import build_config
    from pystatsd.snapshot import SeriesStats, Snapshot

    with tempfile.TemporaryDirectory() as tmp:
        sections = {"kafka": {"type": "kafka", "kafka_broker": f"127.0.0.1:{free_port()}",
                              "kafka_topic": "count", "format": "json"},
                    "file": {"type": "file", "path": f"{tmp}/out.jsonl"}}
        section = build_config({"forwarders": {forwarder: sections[forwarder]}})[
            "forwarders"][forwarder]
        kind = KafkaForwarder if forwarder == "kafka" else FileForwarder
        sender = kind(forwarder, section, ForwarderContext(state_dir=Path(tmp)))
        sender.open()
        snapshot = Snapshot(start=1000.0, interval=10.0, host="bench", series=tuple(
            SeriesStats(f"bench.app{i}.requests.count", "counter", (),
                        {"count": 7.0, "rate": 0.7}) for i in range(series)))
        if part == "encode":  # the Kafka forwarder's records alone: encoding and message ids
            list(map(sender._records, [snapshot]))  # type: ignore[union-attr]
        elif part == "produce":  # handing ready records to the producer alone
            records = sender._records(snapshot)  # type: ignore[union-attr]
            list(map(sender._produce, records))  # type: ignore[union-attr]
        else:
            list(map(sender.send, [snapshot]))
        sys.stdout.flush()
        os._exit(0)  # no shutdown: its cost is not the flush's


def count_flush(forwarder: str, series: int) -> None:
    """The workload under callgrind: the daemon's part of one flush of ``series`` counters to
    ``forwarder`` (kafka or file), inside ``map()``: the forked snapshot (the child's
    instructions are its own process's, not counted) and the forwarder's send, on the
    counting thread, the way ``Daemon.flush`` runs them on the checkout measured: where every
    forwarder prepares, the series kept as the child's frames (``SeriesFrames``, never made
    here: the forwarder reads only the count); before, made into ``SeriesStats``."""
    import functools
    import threading

    from forwarders.base import ForwarderContext
    from forwarders.file import FileForwarder
    from forwarders.kafka import KafkaForwarder
    from forwarders.kafka.embedded_broker import free_port
    from pystatsd import daemon, forked_snapshot
    from pystatsd import snapshot as snapshots
    from pystatsd.aggregation import MetricMgr
    from pystatsd.config import build_config
    from pystatsd.sample import COUNTER, Sample

    with tempfile.TemporaryDirectory() as tmp:
        sections = {"kafka": {"type": "kafka", "kafka_broker": f"127.0.0.1:{free_port()}",
                              "kafka_topic": "count", "format": "json"},
                    "file": {"type": "file", "path": f"{tmp}/out.jsonl"}}
        config = build_config({"forwarders": {forwarder: sections[forwarder]}})
        kind = KafkaForwarder if forwarder == "kafka" else FileForwarder
        sender = kind(forwarder, config["forwarders"][forwarder],
                      ForwarderContext(state_dir=Path(tmp)))
        sender.open()
        manager = MetricMgr(config)
        for i in range(series):
            manager.add(Sample(f"bench.app{i}.requests.count", COUNTER, 7.0))
        lock = threading.Lock()
        header = snapshots.Snapshot(start=1000.0, interval=10.0, host="bench")

        def flush(table: Any) -> None:
            if not hasattr(forked_snapshot, "Preparation"):  # before prepared flushes
                got = forked_snapshot.finish_forked(manager, table, 10.0, lock)
                sender.send(snapshots.Snapshot(1000.0, 10.0, "bench", tuple(got)))
                return
            preparation = forked_snapshot.Preparation({forwarder: functools.partial(
                daemon._prepare, kind, sender.config, header)})
            if hasattr(forked_snapshot, "SeriesFrames"):  # deferred where all prepared
                frames = forked_snapshot.finish_forked(manager, table, 10.0, lock, preparation,
                                                       defer=True)
                flushed: Any = snapshots.DeferredSnapshot.of(  # type: ignore[attr-defined]
                    1000.0, 10.0, "bench", len(frames), frames.make, ())
            else:
                got = forked_snapshot.finish_forked(manager, table, 10.0, lock, preparation)
                flushed = snapshots.Snapshot(1000.0, 10.0, "bench", tuple(got))
            if forwarder in preparation.results:
                sender.send_prepared(flushed, preparation.results[forwarder])
            else:  # a forwarder without prepare on that checkout
                sender.send(flushed)

        list(map(flush, [manager.swap()]))
        sys.stdout.flush()
        os._exit(0)


def instructions_per_series(forwarder: str, series: int, part: str = "send",
                            checkout: Path = REPO) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R", "valgrind", "--tool=callgrind",
             "--toggle-collect=map_next", f"--callgrind-out-file={workdir}/out.%p",
             sys.executable, __file__, "--count-send", f"{forwarder}:{part}",
             "--series", str(series)],
            capture_output=True, text=True, check=True, cwd=checkout,
            env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(checkout),
                 "E2E_CHECKOUT": str(checkout)})
    # The first process to report is the one started; a forked snapshot child reports too.
    found = re.search(r"==(\d+)== Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit("no 'Collected' line from callgrind:\n" + result.stderr[-2000:])
    parent = re.search(r"==(\d+)==", result.stderr)
    assert parent is not None
    mine = re.search(rf"=={parent.group(1)}== Collected : (\d+)", result.stderr)
    assert mine is not None, result.stderr[-2000:]
    return int(mine.group(1)) / series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forwarders", default="kafka,file")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--interval", type=float, help="flush_interval (default 10 s)")
    parser.add_argument("--seconds", type=float,
                        help="sending per step (default 35 s: at least two whole intervals)")
    parser.add_argument("--steps", type=int, help="bisection steps (default 6)")
    parser.add_argument("--low", type=int, default=2_500, help="datagrams/s, 20 lines each")
    parser.add_argument("--high", type=int, default=50_000)
    parser.add_argument("--bootstrap", help="a Kafka cluster instead of the embedded broker")
    parser.add_argument("--quick", action="store_true",
                        help="5 s intervals, 12 s steps, 5 bisection steps")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per series of each forwarder's send (callgrind)")
    parser.add_argument("--series", type=int, default=20_000,
                        help="series of the flush --instructions counts")
    parser.add_argument("--checkout", action="append", default=[], type=Path,
                        help="--instructions: also count another checkout's flush (repeat)")
    parser.add_argument("--only-flush", action="store_true",
                        help="--instructions: only the whole flushes")
    parser.add_argument("--count-send", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_send:
        forwarder, part = args.count_send.split(":")
        if part == "flush":
            count_flush(forwarder, args.series)
        count_send(forwarder, args.series, part)
    if args.instructions:
        for forwarder in [] if args.only_flush else args.forwarders.split(","):
            parts = ("send", "encode", "produce") if forwarder == "kafka" else ("send",)
            for part in parts:
                per_series = instructions_per_series(forwarder, args.series, part)
                print(f"{forwarder:5} {part:7}: {per_series:,.0f} instructions/series "
                      f"(callgrind, one flush of {args.series:,} series)", flush=True)
        for forwarder in args.forwarders.split(","):
            for checkout in [REPO, *args.checkout]:
                per_series = instructions_per_series(forwarder, args.series, "flush",
                                                     checkout.resolve())
                print(f"{forwarder} flush, the daemon's process ({checkout}): "
                      f"{per_series:,.0f} instructions/series (callgrind, {args.series:,} "
                      "series)", flush=True)
        return 0
    quick = {"interval": 5.0, "seconds": 12.0, "steps": 5}
    full = {"interval": 10.0, "seconds": 35.0, "steps": 6}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.names:,} series, "
          f"flush every {args.interval:g} s, {args.seconds:g} s steps, workers {args.workers}",
          flush=True)
    broker = None if args.bootstrap else EmbeddedBroker()
    bootstrap = args.bootstrap or broker.start()  # type: ignore[union-attr]
    summary: list[tuple[str, dict[str, Any] | None]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            blast = build(workdir)
            searches = []
            for forwarder in args.forwarders.split(","):
                setup = Setup(args, workdir, bootstrap, forwarder)
                try:
                    setup.check()
                except DaemonRefused as refused:
                    print(refused, file=sys.stderr)
                    return 2
                searches.append(Bisection(setup))
            for _ in range(args.steps):
                for search in searches:
                    search.step(blast)
            summary = [(search.setup.label, search.best) for search in searches]
    finally:
        if broker is not None:
            broker.stop()
    print(f"\nlossless (<= {MAX_LOSS:.1%} lost by the kernel's count and by what reached the "
          f"backend), {args.names:,} series, workers {args.workers}:")
    rates = {}
    for forwarder, best in summary:
        if best is None:
            print(f"  {forwarder:5}: lossy at every rate tried")
            continue
        rates[forwarder] = best["rate"] * LINES_PER_DATAGRAM
        flushes = best["flush_seconds"]
        timing = (f"interval end -> "
                  f"{'acknowledged' if forwarder.startswith('kafka') else 'written'} "
                  f"median {statistics.median(flushes):.2f} s, max {max(flushes):.2f} s"
                  if flushes else "no flush timed")
        print(f"  {forwarder:5}: {rates[forwarder]:,} lines/s at {best['cpu_core']:.0%} of a core"
              f", {best['us_per_line']:.2f} us CPU/line; {timing} (load {best['load']:.1f})")
    for label, rate in rates.items():
        if label != "file" and "file" in rates:
            print(f"  {label} / file: {rate / rates['file']:.0%} (target >= 90%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
