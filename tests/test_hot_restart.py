"""Hot restart (SIGUSR2) on the real daemon under load: nothing lost, nothing counted twice,
the interval spanning the hand-over reported once by the successor; a successor that dies at
start leaves the old daemon serving with nothing lost."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.admin_helpers import wait_until

pytestmark = pytest.mark.integration

LINES_PER_DATAGRAM = 50
DATAGRAMS_PER_TICK = 10
TICK = 0.01  # 10 datagrams of 50 lines every 10 ms: 50,000 lines/s

# Injected from here, not by a production switch: the successor (it has the hand-over
# descriptor in its environment) exits before it reads anything.
EXIT_AT_START = '''\
import itertools
import os

if "PYSTATSD_HANDOVER_FD" in os.environ:
    os._exit(3)
'''


class Load:
    """A steady sender of known counter totals: UDP datagrams (1 to ``hr.ones`` per line for
    half their lines, 3 to ``hr.threes`` for the other half) and short TCP connections."""

    def __init__(self, port: int, seconds: float) -> None:
        self.port = port
        self.seconds = seconds
        self.sent = {"hr.ones": 0, "hr.threes": 0, "hr.tcp": 0}
        half = LINES_PER_DATAGRAM // 2
        self.payload = b"\n".join([b"hr.ones:1|c"] * half + [b"hr.threes:3|c"] * half)
        self.per_datagram = {"hr.ones": half, "hr.threes": 3 * half}
        self.thread = threading.Thread(target=self._run)
        self.tcp_thread = threading.Thread(target=self._run_tcp)

    def start(self) -> None:
        self.thread.start()
        self.tcp_thread.start()

    def join(self) -> None:
        self.thread.join()
        self.tcp_thread.join()

    def _run_tcp(self) -> None:
        """Short TCP connections, 100 lines each, 20 a second: whichever process accepts one
        reads it whole."""
        start = time.monotonic()
        while time.monotonic() - start < self.seconds:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"hr.tcp:1|c\n" * 100)
            self.sent["hr.tcp"] += 100
            time.sleep(0.05)

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            start = time.monotonic()
            tick = 0
            while time.monotonic() - start < self.seconds:
                for _ in range(DATAGRAMS_PER_TICK):
                    sock.sendto(self.payload, ("127.0.0.1", self.port))
                    for name, n in self.per_datagram.items():
                        self.sent[name] += n
                tick += 1
                pause = start + tick * TICK - time.monotonic()
                if pause > 0:
                    time.sleep(pause)


def flushed(daemon: Any) -> dict[str, list[tuple[float, float, float]]]:
    """name -> [(interval_start, interval, count)] of every counter record printed."""
    found: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for record in daemon.records():
        if record["name"].startswith("hr."):
            found[record["name"]].append((record["interval_start"], record["interval"],
                                          record["stats"]["count"]))
    return found


def logged(daemon: Any, needle: str, timeout: float = 30.0) -> str:
    """The first stderr line with ``needle``, from the first daemon or its successor (which
    writes to the same pipe, and outlives the process the fixture started)."""
    assert wait_until(lambda: any(needle in line for line in list(daemon.stderr)), timeout), \
        f"{needle!r} not logged:\n{''.join(daemon.stderr)}"
    return next(line for line in daemon.stderr if needle in line)


def successor_pid(daemon: Any) -> int:
    return int(daemon.wait_for_log("started successor pid").split("successor pid ")[1]
               .split(":")[0])


def exited(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return status == "Z"


def test_usr2_under_load_loses_nothing_and_counts_nothing_twice(start_daemon: Any) -> None:
    daemon = start_daemon({"flush_interval": 2, "self_metrics": {"enabled": False}})
    load = Load(daemon.port, seconds=10.0)
    load.start()
    time.sleep(4.0)
    daemon.signal(signal.SIGUSR2)
    pid = successor_pid(daemon)
    logged(daemon, "took over from pid")
    assert daemon.proc.wait(30) == 0  # the old one exits once it has handed over
    load.join()
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    logged(daemon, "stopped; everything received was flushed and delivered")
    assert wait_until(lambda: exited(pid), timeout=10)
    daemon.kill()  # joins the readers of the shared stdout and stderr
    records = flushed(daemon)
    log = "".join(daemon.stderr)
    assert "kernel dropped" not in log, log[-3000:]
    for name, total in load.sent.items():
        intervals = sorted(records[name])
        assert sum(count for _, _, count in intervals) == total, (name, intervals)
        starts = [start for start, _, _ in intervals]
        assert len(starts) == len(set(starts)), f"an interval reported twice: {intervals}"
        for (start, length, _), (following, _, _) in itertools.pairwise(intervals):
            assert following == pytest.approx(start + length), intervals  # none skipped
    # The old one handed its interval in flight over (it was mid-way through one); had it
    # also reported it, that interval's start would be in the list twice.
    assert re.search(r"handed over [1-9]\d* series", log) and "may be lost" not in log


def test_a_successor_that_exits_at_start_leaves_the_old_daemon_serving(
        start_daemon: Any, tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EXIT_AT_START)
    daemon = start_daemon({"flush_interval": 3600, "self_metrics": {"enabled": False}},
                          pythonpath=(str(hook),))
    daemon.send_udp(b"hr.ones:1|c\nhr.ones:1|c")
    daemon.signal(signal.SIGUSR2)
    line = daemon.wait_for_log("hot restart failed")
    assert "exited with status 3 before it was ready" in line
    daemon.send_udp(b"hr.ones:5|c")
    daemon.send_tcp(b"hr.ones:10|c\n")
    time.sleep(0.3)
    assert daemon.stop() == 0
    assert [count for _, _, count in flushed(daemon)["hr.ones"]] == [17]


def test_every_kind_of_series_state_crosses_the_hand_over(start_daemon: Any) -> None:
    daemon = start_daemon({"flush_interval": 10, "self_metrics": {"enabled": False}})
    daemon.send_udp(b"hr.carried:5|g")
    assert wait_until(lambda: any(r["name"] == "hr.carried" for r in daemon.records()), 15)
    # Just after a flush: the next one is 10 s away, time for the whole hand-over.
    daemon.send_udp(b"hr.timer:10|ms\nhr.timer:20|ms\nhr.set:a|s\nhr.set:b|s\nhr.gauge:1|g\n"
                    b"hr.gauge:+1|g\nhr.count:2|c")
    time.sleep(0.2)
    daemon.signal(signal.SIGUSR2)
    pid = successor_pid(daemon)
    logged(daemon, "took over from pid")
    daemon.send_udp(b"hr.timer:30|ms\nhr.set:b|s\nhr.set:c|s\nhr.carried:+2|g\nhr.gauge:+3|g\n"
                    b"hr.count:1|c")
    time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    logged(daemon, "stopped; everything received was flushed and delivered")
    assert wait_until(lambda: exited(pid), timeout=10)
    daemon.kill()
    last = {r["name"]: r for r in daemon.records() if r["name"].startswith("hr.")}
    assert len({r["interval_start"] for r in last.values()}) == 1  # one interval, once
    assert last["hr.carried"]["stats"]["value"] == 7  # the carried 5, moved by +2 after
    assert last["hr.gauge"]["stats"]["value"] == 5  # set to 1, +1 before, +3 after
    assert last["hr.count"]["stats"]["count"] == 3
    assert last["hr.set"]["stats"]["count"] == 3  # a, b, c: b counted once
    timer = last["hr.timer"]["stats"]
    assert (timer["count"], timer["min"], timer["max"], timer["sum"]) == (3, 10, 30, 60)
    carried_records = [r for r in daemon.records() if r["name"] == "hr.carried"]
    assert [r["stats"]["value"] for r in carried_records] == [5, 7]
