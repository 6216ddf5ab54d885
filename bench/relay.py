"""Relay throughput: the highest offered load the statsd_relay forwarder relays with < 0.1% loss.

Processes: a C load generator (bench/udp_blast.c, compiled into build/ on first use) sends paced
datagrams of 1 or 20 statsd lines to the relay; the relay (one Python process: a blocking
``recv`` loop handing each datagram's lines to ``StatsdRelayForwarder.submit_lines``, exactly
what the daemon does in ``mode: relay``, or the daemon itself with ``--daemon``) routes them
by jump hash to four loopback UDP sinks, which count the lines they get. Each step offers a
rate for a few seconds; loss = 1 - lines received by the sinks / lines sent.

Run: PYTHONPATH=. python bench/relay.py [--quick] [--daemon]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from senders import build_sender

REPO = Path(__file__).resolve().parent.parent
BLAST = REPO / "build" / "udp_blast"
NAMES = 20000
MAX_LOSS = 0.001
LADDERS = {  # datagrams per second offered, per lines-per-datagram
    20: [25000, 50000, 60000, 65000, 70000, 80000, 90000, 100000],
    1: [50000, 100000, 150000, 175000, 200000, 250000, 300000],
}


def sink(port_out: Any, count: Any, stop: Any) -> None:
    """Count the lines arriving on one UDP socket until ``stop`` is set."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    port_out.value = sock.getsockname()[1]
    sock.settimeout(0.05)
    lines = 0
    last = time.monotonic()
    while not stop.is_set():
        try:
            data = sock.recv(65535)
        except TimeoutError:
            count.value = lines
            continue
        lines += data.count(b"\n") + 1
        now = time.monotonic()
        if now - last > 0.05:
            count.value = lines
            last = now
    count.value = lines
    sock.close()


def relay(port_out: Any, backends: list[int], stop: Any, cpu: Any) -> None:
    """The relay: the daemon's relay-mode receive loop around the forwarder."""
    sys.path.insert(0, str(REPO))
    from forwarders.base import ForwarderContext
    from forwarders.statsd_relay import StatsdRelayForwarder

    config = {"groups": [{"hash": "jump",
                          "backends": [f"127.0.0.1:{port}" for port in backends]}]}
    forwarder = StatsdRelayForwarder("relay", config, ForwarderContext())
    forwarder.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    port_out.value = sock.getsockname()[1]
    recv = sock.recv
    submit = forwarder.submit_lines
    while not stop.is_set():
        try:
            while True:
                submit(recv(65535).split(b"\n"))
        except TimeoutError:
            pass
        times = os.times()
        cpu.value = times.user + times.system
    forwarder.close(2.0)
    sock.close()


def daemon_relay(backends: list[int], workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m pystatsd`` in ``mode: relay`` with the same forwarder config."""
    import yaml

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {
        "mode": "relay", "bind_address": "127.0.0.1", "bind_port": port,
        "listeners": [{"protocol": "udp"}],
        "forwarders": {"relay": {"type": "statsd_relay", "groups": [
            {"hash": "jump", "backends": [f"127.0.0.1:{p}" for p in backends]}]}},
    }
    path = workdir / "relay.conf"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pystatsd", "-c", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    return proc, port


def run_ladder(lines_per_datagram: int, seconds: float, use_daemon: bool) -> list[dict[str, float]]:
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    sink_ports = [ctx.Value("i", 0) for _ in range(4)]
    counts = [ctx.Value("q", 0, lock=False) for _ in range(4)]
    sinks = [ctx.Process(target=sink, args=(p, c, stop)) for p, c in zip(sink_ports, counts,
                                                                         strict=True)]
    for process in sinks:
        process.start()
    while not all(p.value for p in sink_ports):
        time.sleep(0.01)
    backends = [p.value for p in sink_ports]
    relay_stop = ctx.Event()
    cpu = ctx.Value("d", 0.0, lock=False)
    daemon = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    if use_daemon:
        daemon, relay_port = daemon_relay(backends, workdir)
        relay_proc = None
    else:
        port_value = ctx.Value("i", 0)
        relay_proc = ctx.Process(target=relay, args=(port_value, backends, relay_stop, cpu))
        relay_proc.start()
        while not port_value.value:
            time.sleep(0.01)
        relay_port = port_value.value
    def relay_cpu() -> float:
        if daemon is None:
            return float(cpu.value)
        fields = Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    results = []
    try:
        for rate in LADDERS[lines_per_datagram]:
            before = sum(c.value for c in counts)
            cpu_before = relay_cpu()
            out = subprocess.run(
                [str(BLAST), "127.0.0.1", str(relay_port), str(rate), str(seconds),
                 str(lines_per_datagram), str(NAMES)],
                capture_output=True, text=True, check=True)
            sent = int(out.stdout.strip())
            time.sleep(0.6)
            received = sum(c.value for c in counts) - before
            loss = 1 - received / sent if sent else 1.0
            used = relay_cpu() - cpu_before
            step = {"offered_datagrams_per_s": rate, "lines_per_s": sent / seconds,
                    "loss": loss, "relay_cpu_s": used,
                    "lines_per_cpu_s": sent / used if used else 0.0}
            results.append(step)
            print(f"  {lines_per_datagram:>2} lines/dgram  offered {rate:>7,} dgrams/s = "
                  f"{sent / seconds:>10,.0f} lines/s  loss {loss:7.3%}  relay cpu "
                  f"{used / seconds:4.0%} ({step['lines_per_cpu_s']:,.0f} lines per cpu-s)",
                  flush=True)
            if loss >= MAX_LOSS:
                break
    finally:
        relay_stop.set()
        if relay_proc is not None:
            relay_proc.join(10)
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(10)
        stop.set()
        for process in sinks:
            process.join(5)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s steps (about a minute)")
    parser.add_argument("--daemon", action="store_true",
                        help="relay through `python -m pystatsd` in mode: relay")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 6.0
    build_sender(BLAST, "bench/relay.py")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{'daemon' if args.daemon else 'forwarder + recv loop'}, 4 UDP backends, jump hash")
    summary = []
    for lines in (20, 1):
        steps = run_ladder(lines, seconds, args.daemon)
        good = [s for s in steps if s["loss"] < MAX_LOSS]
        best = max(good, key=lambda s: s["lines_per_s"]) if good else None
        summary.append((lines, best))
    print("best with < 0.1% loss:")
    for lines, best in summary:
        if best is None:
            print(f"  {lines:>2} lines/dgram: none of the offered rates")
        else:
            print(f"  {lines:>2} lines/dgram: {best['lines_per_s']:,.0f} lines/s "
                  f"({best['lines_per_s'] / lines:,.0f} datagrams/s), loss {best['loss']:.3%}, "
                  f"relay cpu {best['relay_cpu_s'] / seconds:.0%} of one core")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes on the machine "
          "skew the figures: the relay loses datagrams when it does not get the CPU in time)")


if __name__ == "__main__":
    main()
