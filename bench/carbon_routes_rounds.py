"""carbon_routes' send rounds, on the calling thread: graphite lines (datagrams of 20) routed
by one ``consistent_hashing_v2`` route over two TCP sinks (child processes), until written.

The sender thread's per-line work (routing, the ring, queueing, framing, writing), without the
daemon or the receive path. ``--instructions`` runs the workload under
``valgrind --tool=callgrind`` twice, with ``--lines`` and with none, and prints the difference
per line: a count that the machine's load does not move (the wall-clock figure it does).

Run: PYTHONPATH=. python bench/carbon_routes_rounds.py [--lines 20000] [--instructions]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from callgrind_count import collected  # noqa: E402

SINK = ("import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "print(s.getsockname()[1], flush=True)\nc, _ = s.accept()\nwhile c.recv(1 << 20): pass")


def workload(lines: int) -> float:
    """Route and write ``lines`` lines; return the seconds the rounds took."""
    from forwarders import ForwarderContext, load_forwarder_class
    from pystatsd.config import build_config

    sinks = [subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    ports = [int(sink.stdout.readline()) for sink in sinks if sink.stdout is not None]
    section = build_config({"forwarders": {"r": {
        "type": "carbon_routes", "queue_size": 100000,
        "routes": [{"key": "ring", "type": "consistent_hashing_v2", "destinations": [
            {"address": f"127.0.0.1:{port}", "instance": f"i{i}", "queue_lines": 1000000}
            for i, port in enumerate(ports)]}]}}})["forwarders"]["r"]
    relay = load_forwarder_class("carbon_routes")("r", section, ForwarderContext(
        state_dir=Path(tempfile.mkdtemp())))
    relay.open()
    for i in range(lines // 20):
        relay.submit_lines([b"bench.m%d 1 1700000000" % ((i * 20 + j) % 20000)
                            for j in range(20)])
    start = time.perf_counter()
    relay.send_round(time.monotonic())
    while relay.counters["sent"] < lines:
        relay.send_round(time.monotonic())
    took = time.perf_counter() - start
    relay.shutdown(1)
    for sink in sinks:
        sink.wait(10)
    return took


def instructions(lines: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--lines", str(lines), "--run"], capture_output=True, text=True,
        check=True)  # the same PYTHONPATH: the tree being measured
    return collected(out.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200000)
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per line under callgrind (needs valgrind)")
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        workload(args.lines)
    elif args.instructions:
        per_line = (instructions(args.lines) - instructions(0)) / args.lines
        print(f"{per_line:,.0f} instructions/line (callgrind, {args.lines:,} lines)")
    else:
        took = workload(args.lines)
        print(f"{args.lines / took:,.0f} lines/s (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
