"""pystatsd beside Etsy statsd and statsite under one harness: lossless rate, CPU per line, RSS.

Each system runs as its own process on loopback, given the same UDP receive buffer by an
LD_PRELOAD shim (bench/rcvbuf_preload.c: SO_RCVBUF on every UDP socket it binds; Etsy statsd
never sets one, and the machine's net.core.rmem_default is left alone). bench/loadgen.c offers
``--names`` series (counters, gauges, timers, sets; half with DogStatsD tags) at a fixed
datagram rate, 20 lines per datagram and 1; each step lasts ``--seconds``. Loss is what the
kernel dropped at that socket (``/proc/net/udp``'s drops column), the same measure for every
system. The rate is bisected for the highest with at most 0.1% loss; the rate reported is what
the sender sent (on a loaded machine it can fall short of the rate asked: marked). CPU is the
process's own user + system time (``/proc/PID/stat``, all its threads) over the step; RSS is
VmRSS at its end. All flush every 10 s, to no backend / no forwarder (statsite: its stream
command discards).

statsite runs only when given ``--statsite PATH`` (a binary built by hand from a fetched
source: its code is not in this repository). It rejects a line with DogStatsD tags, so with
``--statsite`` every system gets the same lines without tags.

    python bench/side_by_side.py [--quick] [--systems pystatsd,etsy,statsite]
        [--statsite PATH] [--no-tags] [--rcvbuf 4194304]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ETSY = REPO / "build" / "npm" / "node_modules" / "statsd" / "stats.js"
MAX_LOSS = 0.001
TICKS = os.sysconf("SC_CLK_TCK")
RANGES = {20: (5_000, 120_000), 1: (20_000, 400_000)}
"""Datagrams per second bisected between, per lines per datagram."""


def build(workdir: Path) -> tuple[Path, Path]:
    loadgen, shim = workdir / "loadgen", workdir / "rcvbuf.so"
    subprocess.run(["gcc", "-O2", "-o", str(loadgen), str(REPO / "bench" / "loadgen.c")],
                   check=True)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(shim),
                    str(REPO / "bench" / "rcvbuf_preload.c"), "-ldl"], check=True)
    return loadgen, shim


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def statsite_command(binary: Path, port: int, workdir: Path, rcvbuf: int) -> list[str]:
    """statsite on loopback only (its defaults listen on every address, TCP and UDP 8125)."""
    config = workdir / "statsite.ini"
    config.write_text("\n".join([
        "[statsite]", "bind_address=127.0.0.1", f"udp_port={port}", f"tcp_port={free_port()}",
        f"udp_rcvbuf={rcvbuf}", "flush_interval=10", "daemonize=0", "log_level=WARN",
        f"pid_file={workdir / 'statsite.pid'}", "stream_cmd=cat > /dev/null", ""]))
    return [str(binary), "-f", str(config)]


def start(system: str, port: int, workdir: Path, shim: Path, args: argparse.Namespace,
          pythonpath: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "LD_PRELOAD": str(shim), "BENCH_RCVBUF": str(args.rcvbuf),
           "PYTHONPATH": os.pathsep.join((*pythonpath, str(REPO)))}
    if system == "statsite":
        command = statsite_command(args.statsite, port, workdir, args.rcvbuf)
    elif system == "etsy":
        config = workdir / "etsy.js"
        config.write_text(f"{{ port: {port}, address: '127.0.0.1', flushInterval: 10000, "
                          "backends: [], deleteIdleStats: true }")
        command = ["node", str(ETSY), str(config)]
    else:
        config = workdir / "pystatsd.yaml"
        config.write_text(yaml.safe_dump({
            "bind_address": "127.0.0.1", "bind_port": port,
            "flush_interval": getattr(args, "flush_interval", 10),
            "state_dir": str(workdir / "state"), "forwarders": {},
            "self_metrics": {"enabled": False}}))
        command = [sys.executable, "-m", "pystatsd", "-c", str(config)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=workdir)
    end = time.monotonic() + 20
    while time.monotonic() < end and socket_row(port) is None:
        time.sleep(0.1)
    if socket_row(port) is None:
        proc.kill()
        raise SystemExit(f"{system} did not bind 127.0.0.1:{port}")
    time.sleep(0.5)
    return proc


def socket_row(port: int) -> list[str] | None:
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted:
            return fields
    return None


def drops(port: int) -> int:
    row = socket_row(port)
    return int(row[-1]) if row else 0


def queued(port: int) -> int:
    row = socket_row(port)
    return int(row[4].split(":")[1], 16) if row else 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def step(loadgen: Path, proc: subprocess.Popen, port: int, rate: int, seconds: float,
         lines: int, args: argparse.Namespace) -> dict[str, float]:
    dropped, cpu, began = drops(port), cpu_seconds(proc.pid), time.monotonic()
    sent = subprocess.run([str(loadgen), "127.0.0.1", str(port), str(rate), str(seconds),
                           str(lines), str(args.names), str(rate), str(int(args.tags)),
                           *([str(args.pool)] if getattr(args, "pool", None) else [])],
                          check=True, capture_output=True, text=True).stdout.split()
    end = time.monotonic() + 5
    while queued(port) and time.monotonic() < end:  # let it drain its buffer
        time.sleep(0.05)
    wall = time.monotonic() - began
    datagrams, sent_lines = int(sent[0]), int(sent[1])
    used = cpu_seconds(proc.pid) - cpu
    # The sender may fall short of the rate asked (on a loaded machine): what counts is sent.
    return {"rate": rate, "sent_rate": datagrams / seconds,
            "loss": (drops(port) - dropped) / max(datagrams, 1),
            "lines": sent_lines, "cpu_core": used / wall, "us_per_line": used / sent_lines * 1e6,
            "rss_mb": rss_mb(proc.pid), "load": os.getloadavg()[0]}


def bisect(loadgen: Path, proc: subprocess.Popen, port: int, lines: int, args: argparse.Namespace,
           label: str) -> dict[str, float] | None:
    low, high = RANGES[lines]
    step(loadgen, proc, port, low, 1.0, lines, args)  # warm-up: every name seen
    best = None
    for _ in range(args.steps):
        rate = (low + high) // 2
        result = step(loadgen, proc, port, rate, args.seconds, lines, args)
        ok = result["loss"] <= MAX_LOSS
        print(f"  {label:8} {lines:2} lines/dgram {rate:>8,} dgram/s asked, "
              f"{result['sent_rate']:>8,.0f} sent {'ok  ' if ok else 'LOSS'}"
              f" loss {result['loss']:.3%} cpu {result['cpu_core']:.0%} "
              f"{result['us_per_line']:.2f} us/line rss {result['rss_mb']:.0f} MB "
              f"load {result['load']:.1f}", flush=True)
        if ok:
            best, low = result, rate
        else:
            high = rate
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="pystatsd,etsy,statsite")
    parser.add_argument("--statsite", type=Path, help="a statsite binary (else it is skipped)")
    parser.add_argument("--no-tags", dest="tags", action="store_false",
                        help="no DogStatsD tags on any line (implied by --statsite)")
    parser.add_argument("--workloads", default="20,1")
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--rcvbuf", type=int, default=4 << 20,
                        help="SO_RCVBUF asked for (the kernel doubles it, up to rmem_max)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="2 s steps, 5 bisection steps")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.steps = 2.0, 5
    if args.statsite:
        args.tags = False
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        loadgen, shim = build(workdir)
        for lines in map(int, args.workloads.split(",")):
            for system in args.systems.split(","):
                if system == "etsy" and not ETSY.exists():
                    print(f"  etsy: {ETSY} missing (copy build/npm from a checkout that has it)")
                    continue
                if system == "statsite" and not args.statsite:
                    print("  statsite: skipped (no --statsite PATH: build it from its source, "
                          "which is not in this repository)")
                    continue
                port = free_port()
                proc = start(system, port, workdir, shim, args)
                try:
                    best = bisect(loadgen, proc, port, lines, args, system)
                finally:
                    proc.terminate()
                    proc.wait(20)
                summary.append((system, lines, best))
    print(f"\nlossless (<= {MAX_LOSS:.1%} kernel drops), SO_RCVBUF {args.rcvbuf:,} asked, "
          f"{args.names:,} names, {'half' if args.tags else 'none'} tagged, "
          f"{args.seconds:g} s steps:")
    for system, lines, best in summary:
        if best is None:
            print(f"  {system:8} {lines:2} lines/dgram: lossy at every rate tried")
            continue
        short = " (the sender's limit)" if best["sent_rate"] < 0.95 * best["rate"] else ""
        print(f"  {system:8} {lines:2} lines/dgram: {best['sent_rate']:,.0f} dgram/s{short} = "
              f"{best['sent_rate'] * lines:,.0f} lines/s at {best['cpu_core']:.0%} of a core, "
              f"{best['us_per_line']:.2f} us CPU/line, RSS {best['rss_mb']:.0f} MB "
              f"(load {best['load']:.1f})")


if __name__ == "__main__":
    main()
