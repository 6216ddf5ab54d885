"""Ingest benchmark: the highest loopback UDP rate one pystatsd process takes with < 0.1% loss.

A C load generator (bench/loadgen.c, compiled here with gcc) sends statsd datagrams at a fixed
rate to a receiver process running the daemon's receive path: ``pystatsd.listeners.UdpListener``
(its native receive or, with ``--receive python``, its Python loop; or, with ``--loop plain``,
a bare blocking ``recv_into`` loop) delivering under a lock to
``Pipeline.ingest``, with a flusher thread that swaps and snapshots every ``--flush-interval``
seconds like the daemon. 10,000 names (counters, gauges, timers, sets; half with DogStatsD tags),
1 and 20 lines per datagram. The rate steps up until loss passes 0.1%; lines aggregated are
compared with lines sent.

    python bench/ingest.py --quick      # 2 s steps, a flush every 2 s: under a minute
    python bench/ingest.py              # 10 s steps, a flush every 10 s (the default): ~4 min
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOSS_LIMIT = 0.001


# -- the receiver (runs in its own process) ---------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def receiver(loop: str, flush_interval: float) -> None:
    """Receive until stdin says ``stop``; answer ``report`` with counts since the last one."""
    sys.path.insert(0, str(ROOT))
    import socket

    from pystatsd.aggregation import MetricMgr
    from pystatsd.config import build_config
    from pystatsd.ingest import Pipeline
    from pystatsd.selfstats import SelfStats

    config = build_config({"forwarders": {}})
    stats = SelfStats()
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, stats)
    lock = threading.Lock()

    clock = time.perf_counter
    last = [clock()]
    stall = [0.0]  # longest gap between two payloads while busy: flushes, GC, the scheduler

    def deliver(payload: bytes) -> None:
        now = clock()
        if now - last[0] > stall[0]:
            stall[0] = now - last[0]
        last[0] = now
        with lock:
            pipeline.ingest(payload)

    stopping = threading.Event()
    if loop == "listener":
        from pystatsd.listeners import UdpListener

        spec = {"protocol": "udp", "address": "127.0.0.1", "port": 0,
                "receive_buffer_bytes": 8 << 20, "max_datagram_bytes": 65535}
        listener = UdpListener(spec, deliver, stats)
        port = listener.address[1]
        listener.start()
        stop_listener = listener.stop
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

        def plain_loop() -> None:
            buffer = bytearray(65535)
            view = memoryview(buffer)
            recv_into = sock.recv_into
            while True:
                size = recv_into(buffer)
                if stopping.is_set():
                    return
                deliver(bytes(view[:size]))

        thread = threading.Thread(target=plain_loop, daemon=True)
        thread.start()

        def stop_listener() -> None:
            stopping.set()
            sock.sendto(b"", ("127.0.0.1", port))
            thread.join()
            sock.close()

    snapshot_seconds: list[float] = []

    def flusher() -> None:
        while not stopping.wait(flush_interval):
            with lock:
                pipeline.publish_counts()  # as the daemon does, just before the swap
                table = manager.swap()
            began = time.perf_counter()
            manager.finish(table, flush_interval)
            snapshot_seconds.append(time.perf_counter() - began)

    flush_thread = threading.Thread(target=flusher, daemon=True)
    flush_thread.start()
    print(json.dumps({"port": port}), flush=True)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    marked_cpu, marked_wall = cpu(), time.monotonic()
    for command in sys.stdin:
        command = command.strip()
        with lock:
            pipeline.publish_counts()
            counts = stats.take()
            series = manager.series_count()
        now_cpu, now_wall = cpu(), time.monotonic()
        print(json.dumps({
            "lines": counts.get("aggregated.samples", 0),
            "datagrams": counts.get("received.datagrams", 0),
            "rejected": sum(v for k, v in counts.items() if k.startswith("rejected.")),
            "cpu_percent": 100.0 * (now_cpu - marked_cpu) / max(now_wall - marked_wall, 1e-9),
            "rss_mb": _rss_bytes() / 1e6,
            "series": series,
            "snapshot_ms": 1000.0 * max(snapshot_seconds, default=0.0),
            "max_stall_ms": 1000.0 * stall[0],
        }), flush=True)
        stall[0] = 0.0
        last[0] = clock()
        marked_cpu, marked_wall = now_cpu, now_wall
        if command == "stop":
            break
    stopping.set()
    stop_listener()


# -- the driver -------------------------------------------------------------------------------
def build_loadgen(workdir: Path) -> Path:
    binary = workdir / "loadgen"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "loadgen.c")], check=True)
    return binary


class Receiver:
    def __init__(self, loop: str, flush_interval: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", "--loop", loop,
             "--flush-interval", str(flush_interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]

    def report(self, command: str = "report") -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        result: dict[str, float] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> dict[str, float]:
        result = self.report("stop")
        self.proc.wait(timeout=10)
        return result


def run_step(loadgen: Path, receiver: Receiver, rate: int, seconds: float, lines: int,
             names: int, seed: int) -> dict[str, float]:
    receiver.report()  # start the window
    sent = subprocess.run([str(loadgen), "127.0.0.1", str(receiver.port), str(rate),
                           str(seconds), str(lines), str(names), str(seed)],
                          check=True, capture_output=True, text=True).stdout.split()
    sent_datagrams, sent_lines = int(sent[0]), int(sent[1])
    time.sleep(0.3)  # let the receiver drain its socket buffer
    got = receiver.report()
    loss = 1.0 - got["lines"] / sent_lines if sent_lines else 0.0
    load = os.getloadavg()[0]  # other work on the machine explains much of the spread
    return {"rate": rate, "seconds": seconds, "sent_datagrams": sent_datagrams,
            "sent_lines": sent_lines, "received_lines": got["lines"], "loss": loss,
            "lines_per_s": got["lines"] / seconds, "cpu_percent": got["cpu_percent"],
            "rss_mb": got["rss_mb"], "series": got["series"], "snapshot_ms": got["snapshot_ms"],
            "max_stall_ms": got["max_stall_ms"], "load_average": load}


def search(loadgen: Path, loop: str, lines: int, rates: list[int], seconds: float, names: int,
           flush_interval: float) -> tuple[dict[str, float] | None, list[dict[str, float]]]:
    receiver = Receiver(loop, flush_interval)
    try:
        # Warm up: every name seen once (the line cache and the series tables fill).
        run_step(loadgen, receiver, rates[0] // 2, 1.0, lines, names, seed=1)
        best = None
        steps = []
        failures = 0
        for rate in rates:
            step = run_step(loadgen, receiver, rate, seconds, lines, names, seed=rate)
            steps.append(step)
            mark = "ok " if step["loss"] < LOSS_LIMIT else "LOSS"
            print(f"  {lines:2d} lines/dgram {rate:>8,} dgram/s  {mark} loss {step['loss']:.3%}"
                  f"  {step['lines_per_s']:>10,.0f} lines/s  cpu {step['cpu_percent']:.0f}%"
                  f"  rss {step['rss_mb']:.1f} MB  longest gap {step['max_stall_ms']:.0f} ms"
                  f"  load {step['load_average']:.2f}",
                  flush=True)
            if step["loss"] < LOSS_LIMIT:
                best = step
                failures = 0
            else:
                failures += 1
                if failures == 2:
                    break
        return best, steps
    finally:
        receiver.close()


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), "?")
    return f"nproc {os.cpu_count()}, {model}, Python {sys.version.split()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps, about a minute")
    parser.add_argument("--loop", choices=["listener", "plain"], default="listener",
                        help="receive with pystatsd.listeners.UdpListener or a bare recv_into")
    parser.add_argument("--receive", choices=["auto", "native", "python"], default="auto",
                        help="the listener's UDP receive (PYSTATSD_UDP_RECEIVE for the "
                        "receiver): the native drain thread and ring, or the Python loop")
    parser.add_argument("--flush-interval", type=float,
                        help="seconds between flushes (default: the step length, so every "
                        "step has one flush: 2 with --quick, else 10 like the daemon)")
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--lines", type=int, choices=[1, 20], help="only this many lines/datagram")
    parser.add_argument("--rates", help="comma-separated datagram rates to try instead of the plan")
    parser.add_argument("--seconds", type=float, help="length of each step")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver(args.loop, args.flush_interval)
        return

    os.environ["PYSTATSD_UDP_RECEIVE"] = args.receive  # the receiver process inherits it
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    flush_interval = args.flush_interval or seconds
    if args.quick:
        plans = {1: [150_000, 200_000, 250_000, 300_000],
                 20: [30_000, 40_000, 50_000, 60_000]}
    else:
        plans = {1: list(range(150_000, 400_001, 25_000)),
                 20: list(range(25_000, 80_001, 5_000))}
    if args.lines:
        plans = {args.lines: plans[args.lines]}
    if args.rates:
        plans = {lines: [int(r) for r in args.rates.split(",")] for lines in plans}
    print(f"machine: {machine()}; loop {args.loop} (udp receive {args.receive}); "
          f"flush every {flush_interval}s; "
          f"{args.names} names; {seconds}s per step", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        loadgen = build_loadgen(Path(workdir))
        for lines, rates in plans.items():
            best, steps = search(loadgen, args.loop, lines, rates, seconds, args.names,
                                 flush_interval)
            results[lines] = {"best": best, "steps": steps}
            if best is None:
                print(f"{lines:2d} lines/dgram: loss >= 0.1% already at {rates[0]:,} dgram/s")
            else:
                print(f"{lines:2d} lines/dgram: best {best['rate']:,} dgram/s = "
                      f"{best['lines_per_s']:,.0f} lines/s with loss {best['loss']:.3%}, "
                      f"cpu {best['cpu_percent']:.0f}%, rss {best['rss_mb']:.1f} MB, "
                      f"{best['series']} series, slowest snapshot {best['snapshot_ms']:.0f} ms",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
