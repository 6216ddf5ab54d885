"""The daemon's RSS: idle after start, and at a fixed rate over 10,000 names through a flush.

A real ``python -m pystatsd`` (the configuration ``bench/side_by_side.py`` uses: one UDP
listener on loopback, no forwarder, 10 s flushes, the same receive buffer shim), then
``bench/loadgen.c`` offers ``--rate`` datagrams/s of ``--lines`` lines over ``--names`` names
for ``--seconds`` (longer than a flush, so the peak includes one). Printed: VmRSS idle, VmRSS at
the end, VmHWM (the peak), and the kernel's drops (a figure taken while losing data is not the
one the target speaks of). ``--repo`` runs another checkout's code (e.g. the main branch) under
the same harness, for a before/after in one run.

    python bench/daemon_rss.py [--rate 10000] [--lines 20] [--seconds 15] [--repo /work/main]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side  # noqa: E402


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000, help="datagrams/s")
    parser.add_argument("--lines", type=int, default=20, help="lines per datagram")
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rcvbuf", type=int, default=4 << 20)
    parser.add_argument("--repo", type=Path, default=side_by_side.REPO)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    args.tags, args.statsite = True, None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        loadgen, shim = side_by_side.build(workdir)  # this checkout's loadgen and shim
        side_by_side.REPO = args.repo.resolve()  # the daemon's PYTHONPATH
        for _ in range(args.runs):
            port = side_by_side.free_port()
            proc = side_by_side.start("pystatsd", port, workdir, shim, args)
            try:
                time.sleep(1.0)
                idle = status_mb(proc.pid, "VmRSS")
                result = side_by_side.step(loadgen, proc, port, args.rate, args.seconds,
                                           args.lines, args)
                print(f"{args.repo}: idle {idle:.1f} MB; after {args.seconds:g} s at "
                      f"{args.rate:,} datagrams/s x {args.lines} lines (sent "
                      f"{result['sent_rate']:,.0f}/s): VmRSS "
                      f"{status_mb(proc.pid, 'VmRSS'):.1f} MB, VmHWM "
                      f"{status_mb(proc.pid, 'VmHWM'):.1f} MB; loss {result['loss']:.3%}, "
                      f"{result['cpu_core']:.0%} of a core (load {os.getloadavg()[0]:.1f})",
                      flush=True)
            finally:
                proc.terminate()
                proc.wait(20)


if __name__ == "__main__":
    main()
