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
  load is printed). ``--rate`` takes a list (``0,1000,10000``; 0: idle, nothing sent), and
  each line also says the receiver's CPU as a share of one core, user and system apart:
  what the native receive's naps (0.2 ms in the drain thread after a short read, 1 ms in the
  delivering thread when the ring is empty) cost at low rates.

The receiver delivers as the daemon does: the native receive hands its batches to
``Pipeline.ingest_batch`` (where the tree has it) under the lock, the Python loop each
datagram to ``Pipeline.ingest``.

    python bench/receive_cpu.py [--callgrind] [--lines 1,20] [--receive native,python]
                                [--rate 0,1000,10000]
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

    def deliver_batch(payloads: list[bytes], failed: object) -> None:
        with lock:
            pipeline.ingest_batch(payloads, failed)
        delivered[0] += len(payloads)
        if delivered[0] == queued:
            done.set()

    batched = {"deliver_batch": deliver_batch} if hasattr(pipeline, "ingest_batch") else {}
    listener = UdpListener(config["listeners"][0], deliver, stats,
                           native=receive == "native", **batched)
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


def process_cpu(pid: int) -> tuple[float, float]:
    """User and system seconds of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def blast_cpu(receive: str, lines: int, rate: int,
              seconds: float) -> tuple[tuple[float, float], int, int]:
    sys.path.insert(0, str(REPO / "bench"))
    from flush_pause import build_blast

    proc = subprocess.Popen([sys.executable, __file__, "--receiver", receive, str(lines), "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    port = int(proc.stdout.readline())
    time.sleep(0.5)
    before = process_cpu(proc.pid)
    if rate:
        sent = subprocess.run([str(build_blast()), "127.0.0.1", str(port), str(rate),
                               str(seconds), str(lines), str(NAMES)], capture_output=True,
                              text=True, check=True).stdout
    else:  # idle: what the receive costs with nothing to receive
        time.sleep(seconds)
        sent = "0"
    time.sleep(0.3)
    after = process_cpu(proc.pid)
    used = (after[0] - before[0], after[1] - before[1])
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
    parser.add_argument("--rate", default="50000",
                        help="datagrams/s offered, or a list of rates (0: idle)")
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
                for rate in (int(r) for r in args.rate.split(",")):
                    (user, system), sent, delivered = blast_cpu(receive, lines, rate,
                                                                args.seconds)
                    span = args.seconds + 0.3
                    per = (f"{(user + system) / delivered * 1e6:.2f} µs CPU per datagram, "
                           if delivered else "")
                    print(f"{lines:2d} lines/datagram, {receive:6}, {rate:>7,}/s: {per}"
                          f"{(user + system) / span * 100:.2f}% of a core (user "
                          f"{user / span * 100:.2f}%, system {system / span * 100:.2f}%; "
                          f"{delivered:,} of {sent:,} delivered; load "
                          f"{os.getloadavg()[0]:.1f}, {time.strftime('%H:%M:%S')})",
                          flush=True)


if __name__ == "__main__":
    main()
