"""CPU per datagram of the UDP listener's receive, native against the Python loop, through the
daemon's pipeline (line cache warm), at 1 and 20 lines per datagram.

Two measures:

- ``--callgrind``: instructions per datagram (user space: valgrind does not see the kernel),
  each configuration run twice under ``valgrind --tool=callgrind`` with N and 2N datagrams
  queued in the socket before the listener starts; the difference over N is the cost of one
  more datagram, start-up excluded. Repeats exactly; the queue is full, so the native
  receive's ``recvmmsg`` takes 64 at a time (its best case).
- default: CPU seconds (user + system, all threads, from /proc) per datagram of a receiver
  process while ``build/udp_blast`` offers ``--rate`` datagrams/s for ``--seconds``: the
  kernel's side included, at a rate where batches are small; noisy on a shared machine (the
  load is printed).

    python bench/receive_cpu.py [--callgrind] [--lines 1,20] [--receive native,python]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
NAMES = 1000


def payloads(lines: int) -> list[bytes]:
    """One datagram per ``lines`` counter lines over NAMES names (what udp_blast sends)."""
    out, name = [], 0
    for _ in range(NAMES // lines + 1):
        out.append(b"\n".join(b"bench.app%d.requests.count:1|c" % ((name + i) % NAMES)
                              for i in range(lines)))
        name += lines
    return out


def receiver(receive: str, lines: int, queued: int) -> None:
    """Make the pipeline and a listener; with ``queued``, queue that many datagrams first and
    end once they are delivered; else print the port and serve until stdin closes."""
    import socket

    from pystatsd.aggregation import MetricMgr
    from pystatsd.config import build_config
    from pystatsd.ingest import Pipeline
    from pystatsd.listeners import UdpListener
    from pystatsd.selfstats import SelfStats

    config = build_config({"forwarders": {}, "listeners": [
        {"protocol": "udp", "address": "127.0.0.1", "port": 0}]})
    stats = SelfStats()
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, stats)
    lock = threading.Lock()
    batch = payloads(lines)
    for payload in batch:  # the line cache knows every shape, as in a running daemon
        pipeline.ingest(payload)
    delivered = [0]
    done = threading.Event()

    def deliver(payload: bytes) -> None:
        with lock:
            pipeline.ingest(payload)
        delivered[0] += 1
        if delivered[0] == queued:
            done.set()

    listener = UdpListener(config["listeners"][0], deliver, stats,
                           native=receive == "native")
    assert listener.receive == receive
    if queued:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for n in range(queued):
                out.sendto(batch[n % len(batch)], listener.address)
        listener.start()
        done.wait(600)
        listener.stop()
        assert listener.kernel_drops == 0 and delivered[0] == queued
        return
    listener.start()
    print(listener.address[1], flush=True)
    sys.stdin.read()
    listener.stop()
    print(delivered[0], flush=True)


def callgrind_instructions(receive: str, lines: int, queued: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
             sys.executable, __file__, "--receiver", receive, str(lines), str(queued)],
            capture_output=True, text=True)
        found = re.search(r"Collected : (\d+)", result.stderr)
        if result.returncode != 0 or found is None:
            raise RuntimeError(result.stderr[-2000:])
        return int(found.group(1))


def process_cpu(pid: int) -> float:
    """User + system seconds of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def blast_cpu(receive: str, lines: int, rate: int, seconds: float) -> tuple[float, int, int]:
    sys.path.insert(0, str(REPO / "bench"))
    from flush_pause import build_blast

    proc = subprocess.Popen([sys.executable, __file__, "--receiver", receive, str(lines), "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    port = int(proc.stdout.readline())
    time.sleep(0.5)
    before = process_cpu(proc.pid)
    sent = subprocess.run([str(build_blast()), "127.0.0.1", str(port), str(rate),
                           str(seconds), str(lines), str(NAMES)], capture_output=True,
                          text=True, check=True).stdout
    time.sleep(0.3)
    used = process_cpu(proc.pid) - before
    proc.stdin.close()
    delivered = int(proc.stdout.readline())
    proc.wait(10)
    return used, int(sent) // lines, delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--lines", default="1,20")
    parser.add_argument("--receive", default="native,python")
    parser.add_argument("--datagrams", type=int, default=2000, help="N, with --callgrind")
    parser.add_argument("--rate", type=int, default=50_000, help="datagrams/s offered")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--receiver", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver(args.receiver[0], int(args.receiver[1]), int(args.receiver[2]))
        return
    for lines in (int(n) for n in args.lines.split(",")):
        for receive in args.receive.split(","):
            if args.callgrind:
                n = args.datagrams
                once = callgrind_instructions(receive, lines, n)
                twice = callgrind_instructions(receive, lines, 2 * n)
                per = (twice - once) / n
                print(f"{lines:2d} lines/datagram, {receive:6}: {per:,.0f} instructions per "
                      f"datagram ({per / lines:,.0f} per line), callgrind, N={n}", flush=True)
            else:
                used, sent, delivered = blast_cpu(receive, lines, args.rate, args.seconds)
                print(f"{lines:2d} lines/datagram, {receive:6}: "
                      f"{used / max(delivered, 1) * 1e6:.2f} µs CPU per datagram "
                      f"({delivered:,} of {sent:,} delivered at {args.rate:,}/s offered; "
                      f"load {os.getloadavg()[0]:.1f}, {time.strftime('%H:%M:%S')})",
                      flush=True)


if __name__ == "__main__":
    main()
