"""Graphite lines through carbon routes, side by side with carbon-c-relay, on this machine.

For each relay, the highest offered load (UDP datagrams of 20 lines, and of 1 line) relayed to
two TCP carbon sinks by consistent hashing with < 0.1% loss. The relays:

* pystatsd: the daemon itself, ``mode: relay``, one UDP listener of ``format: graphite``, a
  ``carbon_routes`` forwarder with one ``consistent_hashing_v2`` route over the two sinks;
* carbon-c-relay (Debian's package): ``cluster ... carbon_ch`` over the same sinks, one worker
  (``-w 1``) and its default (one per core), in submission mode (``-s``).

Then, over TCP (carbon's usual transport), the throughput of one client writing 2 million
lines as fast as the relay takes them, until the sinks have them all.

A C load generator (bench/graphite_blast.c, built into build/ on first use) paces the
datagrams; each sink (its own process) counts the lines it gets. Each step offers a rate for
``--seconds``, waits for the relay to drain, and counts; loss = 1 - received / sent.

Run: PYTHONPATH=. python bench/carbon_routes.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from senders import build_sender

REPO = Path(__file__).resolve().parent.parent
BLAST = REPO / "build" / "graphite_blast"
NAMES = 20000
MAX_LOSS = 0.001
RECEIVE_BUFFER = 4 << 20
"""Both relays' UDP receive buffer: net.core.rmem_max here, the most carbon-c-relay's -U can
get without CAP_NET_ADMIN (pystatsd, as root, could force more: that would not be a fair race)."""
LADDERS = {  # datagrams per second offered, per lines per datagram
    20: [2500, 5000, 10000, 15000, 20000, 30000, 40000, 60000],
    1: [10000, 25000, 50000, 75000, 100000, 150000, 200000],
}


def free_port() -> int:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = int(tcp.getsockname()[1])
        udp.bind(("127.0.0.1", port))
        return port


def sink(port_out: Any, count: Any, stop: Any) -> None:
    """A carbon stand-in: accept connections, count the lines, until ``stop``."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.setblocking(False)
    port_out.value = server.getsockname()[1]
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    lines = 0
    while not stop.is_set():
        for key, _ in selector.select(0.05):
            if key.fileobj is server:
                conn, _ = server.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(conn)
                conn.close()
                continue
            lines += data.count(b"\n")
        count.value = lines


class Sinks:
    def __init__(self, n: int = 2) -> None:
        self.stop = mp.Event()
        self.ports = [mp.Value("i", 0) for _ in range(n)]
        self.counts = [mp.Value("q", 0) for _ in range(n)]
        self.procs = [mp.Process(target=sink, args=(p, c, self.stop), daemon=True)
                      for p, c in zip(self.ports, self.counts, strict=True)]
        for proc in self.procs:
            proc.start()
        while not all(p.value for p in self.ports):
            time.sleep(0.01)

    def received(self) -> int:
        return sum(c.value for c in self.counts)

    def close(self) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.join(5)


@contextmanager
def pystatsd_relay(port: int, sinks: Sinks, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    config = {
        "mode": "relay", "state_dir": str(workdir / "state"),
        "listeners": [{"protocol": "udp", "address": "127.0.0.1", "port": port,
                       "format": "graphite", "receive_buffer_bytes": RECEIVE_BUFFER},
                      {"protocol": "tcp", "address": "127.0.0.1", "port": port,
                       "format": "graphite"}],
        "forwarders": {"routes": {"type": "carbon_routes", "queue_size": 65536, "routes": [
            {"key": "ring", "type": "consistent_hashing_v2", "destinations": [
                {"address": f"127.0.0.1:{p.value}", "queue_lines": 2_000_000}
                for p in sinks.ports]}]}},
    }
    path = workdir / "pystatsd.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(workdir / "pystatsd.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "pystatsd", "-c", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while b"pystatsd started" not in (workdir / "pystatsd.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("pystatsd did not start:\n"
                                 + (workdir / "pystatsd.log").read_text())
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@contextmanager
def carbon_c_relay(port: int, sinks: Sinks, workdir: Path,
                   workers: int | None) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("carbon-c-relay")
    if binary is None:
        raise SystemExit("carbon-c-relay is not installed (apt-get install carbon-c-relay)")
    members = " ".join(f"127.0.0.1:{p.value}" for p in sinks.ports)
    path = workdir / "relay.conf"
    path.write_text(f"cluster sinks carbon_ch {members};\nmatch * send to sinks stop;\n")
    args = [binary, "-f", str(path), "-p", str(port), "-s", "-q", "2000000",
            "-U", str(RECEIVE_BUFFER)]
    if workers:
        args += ["-w", str(workers)]
    log = open(workdir / "relay.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            raise SystemExit("carbon-c-relay did not start:\n"
                             + (workdir / "relay.log").read_text())
        yield proc
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def step(port: int, sinks: Sinks, rate: int, lines: int, seconds: float) -> tuple[int, int]:
    before = sinks.received()
    out = subprocess.run([str(BLAST), "127.0.0.1", str(port), str(rate), str(seconds),
                          str(lines), str(NAMES)], capture_output=True, text=True, check=True)
    sent = int(out.stdout.strip())
    last, still = -1, time.monotonic()
    while time.monotonic() - still < 0.7:  # drained: nothing new for 0.7 s
        now = sinks.received()
        if now != last:
            last, still = now, time.monotonic()
        time.sleep(0.05)
    return sent, sinks.received() - before


def tcp_throughput(port: int, sinks: Sinks, lines: int) -> float:
    """Lines/s relayed when one TCP client writes ``lines`` lines as fast as the relay reads:
    TCP pushes back, so this is throughput (end-to-end, until the sinks have all of them)."""
    chunk = b"".join(b"bench.tcp%d.requests.count 1 1700000000\n" % (i % NAMES)
                     for i in range(10000))
    before = sinks.received()
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(lines // 10000):
            sock.sendall(chunk)
    deadline = time.monotonic() + 120
    while sinks.received() - before < lines and time.monotonic() < deadline:
        time.sleep(0.01)
    took = time.monotonic() - began
    return (sinks.received() - before) / took


def ladder(name: str, relay: Any, seconds: float, quick: bool) -> dict[int, tuple[int, float]]:
    """For each lines-per-datagram: (best rate with < 0.1% loss, lines/s relayed there)."""
    results: dict[int, tuple[int, float]] = {}
    sinks = Sinks()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, relay(port, sinks, Path(tmp)):
        rate = tcp_throughput(port, sinks, 1_000_000 if quick else 2_000_000)
        print(f"  {name:24} tcp: {rate:,.0f} lines/s (load {os.getloadavg()[0]:.1f})",
              flush=True)
        results[0] = (0, rate)
    sinks.close()
    for lines, rates in LADDERS.items():
        sinks = Sinks()
        port = free_port()
        best = (0, 0.0)
        with tempfile.TemporaryDirectory() as tmp, relay(port, sinks, Path(tmp)):
            for rate in rates[::2] if quick else rates:
                sent, got = step(port, sinks, rate, lines, seconds)
                loss = 1 - got / sent if sent else 1.0
                load = os.getloadavg()[0]
                print(f"  {name:24} {lines:2} lines/dgram {rate:7} dgram/s: sent {sent:9} "
                      f"got {got:9} loss {loss:7.3%} (load {load:.1f})", flush=True)
                if loss >= MAX_LOSS:
                    break
                best = (rate, got / seconds)
        sinks.close()
        results[lines] = best
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every other step, 2 s each")
    parser.add_argument("--seconds", type=float, default=4.0)
    options = parser.parse_args()
    seconds = 2.0 if options.quick else options.seconds
    build_sender(BLAST, "bench/carbon_routes.py")
    print(f"{platform.node()}: {os.cpu_count()} cpus, {platform.python_implementation()} "
          f"{platform.python_version()}, load {os.getloadavg()[0]:.1f} at start")
    relays = {
        "pystatsd carbon_routes": pystatsd_relay,
        "carbon-c-relay -w 1": lambda p, s, w: carbon_c_relay(p, s, w, 1),
        "carbon-c-relay (default)": lambda p, s, w: carbon_c_relay(p, s, w, None),
    }
    table = {name: ladder(name, relay, seconds, options.quick) for name, relay in relays.items()}
    print("\n| relay | udp, 20 lines/datagram: datagrams/s (lines/s) | udp, 1 line/datagram: "
          "datagrams/s | tcp: lines/s |")
    print("|---|---|---|---|")
    for name, results in table.items():
        rate20, lines20 = results[20]
        rate1, _ = results[1]
        print(f"| {name} | {rate20:,} ({lines20:,.0f}) | {rate1:,} | {results[0][1]:,.0f} |")


if __name__ == "__main__":
    main()
