"""``workers: N`` on the real daemon: the same corpus from many sockets gives the snapshot one
process gives; gauges keep their arrival order across workers; a worker killed is restarted
and what it held is counted as lost; reload and hot restart keep the port and every line."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections import defaultdict
from contextlib import ExitStack
from typing import Any

import pytest

from tests.admin_helpers import wait_until
from tests.test_hot_restart import Load, exited, flushed, logged, successor_pid

pytestmark = pytest.mark.integration

ACCURACY = 0.01
SOCKETS = 48


def corpus() -> tuple[list[list[bytes]], list[bytes]]:
    """Per UDP socket its datagrams, and TCP connections' bytes: counters (rated, tagged),
    timers (exact, and one past timer_exact_samples), histograms, sets, gauges of deltas from
    every socket and gauges owned by one socket (set, then moved)."""
    rng = random.Random(15)
    per_socket: list[list[bytes]] = []
    for n in range(SOCKETS):
        lines = []
        for i in range(60):
            lines += [b"w.c%d:%d|c" % (i % 7, rng.randrange(1, 9)),
                      b"w.rated:1|c|@0.5|#env:a,zone:%d" % (n % 3),
                      b"w.t%d:%d|ms" % (i % 5, rng.randrange(1000)),
                      b"w.big:%.3f|ms" % rng.uniform(1, 500),
                      b"w.h:%d|h|@0.25" % rng.randrange(100),
                      b"w.s%d:m%d|s" % (i % 3, rng.randrange(40)),
                      b"w.gd:%s|g" % rng.choice([b"+2", b"-1"])]
        lines += [b"w.own%d:%d|g" % (n, n), b"w.own%d:+%d|g" % (n, n)]
        per_socket.append([b"\n".join(lines[k:k + 20]) for k in range(0, len(lines), 20)])
    tcp = [b"".join(b"w.tcp:%d|c\nw.tt:%d|ms\n" % (k, k) for k in range(200))
           for _ in range(6)]
    return per_socket, tcp


def send(port: int, per_socket: list[list[bytes]], tcp: list[bytes]) -> None:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in per_socket]
    try:
        for burst in range(max(map(len, per_socket))):
            for sock, datagrams in zip(sockets, per_socket, strict=True):
                if burst < len(datagrams):
                    sock.sendto(datagrams[burst], ("127.0.0.1", port))
            time.sleep(0.002)
    finally:
        for sock in sockets:
            sock.close()
    for data in tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(data)


def snapshot(daemon: Any) -> dict[tuple[str, str, tuple[Any, ...]], dict[str, float]]:
    """The final flush's series (the rate is left out: it is per second of an interval that
    ends when the daemon stops)."""
    return {(r["name"], r["type"], tuple(sorted(r["tags"].items()))):
            {k: v for k, v in r["stats"].items() if k != "rate"}
            for r in daemon.records() if r["name"].startswith("w.")}


def worker_counts(daemon: Any, name: str) -> dict[int, float]:
    counts: dict[int, float] = defaultdict(float)
    for r in daemon.records():
        parts = r["name"].split(".", 3)
        if parts[:2] == ["pystatsd", "worker"] and parts[3] == name:
            counts[int(parts[2])] += r["stats"]["count"]
    return counts


def test_two_workers_give_the_snapshot_of_one_process(start_daemon: Any) -> None:
    per_socket, tcp = corpus()
    results = {}
    for workers in (1, 2):
        daemon = start_daemon({"workers": workers, "flush_interval": 3600,
                               "timer_exact_samples": 100, "sketch_relative_accuracy": ACCURACY})
        send(daemon.port, per_socket, tcp)
        time.sleep(0.5)
        assert daemon.stop() == 0
        results[workers] = snapshot(daemon)
        if workers == 2:  # both took a share, from different sockets
            shares = worker_counts(daemon, "received.datagrams")
            assert shares[0] > 0 and shares[1] > 0, shares
            assert "receive worker" not in "".join(daemon.stderr).split("died")[0][-1:]
    one, two = results[1], results[2]
    assert len(one) > 20 and one.keys() == two.keys()
    big = ("w.big", "timer", ())
    for key, stats in one.items():
        if key == big:  # past timer_exact_samples: exact moments, percentiles within α
            for stat in ("count", "sum", "min", "max"):
                assert two[key][stat] == pytest.approx(stats[stat], rel=1e-9)
            for stat, value in stats.items():
                assert two[key][stat] == pytest.approx(value, rel=2 * ACCURACY), stat
        else:
            assert two[key] == pytest.approx(stats, rel=1e-9), key
    assert one[("w.gd", "gauge", ())]["value"] == two[("w.gd", "gauge", ())]["value"]
    assert one[("w.own5", "gauge", ())] == {"value": 10.0}


def probe_worker(daemon: Any, sock: socket.socket) -> int:
    """The worker ``sock``'s datagrams land on: one datagram, and whose count it raised."""
    before = worker_counts(daemon, "received.datagrams")
    sock.sendto(b"w.probe:1|c", ("127.0.0.1", daemon.port))
    assert wait_until(lambda: sum(worker_counts(daemon, "received.datagrams").values())
                      > sum(before.values()), 10)
    after = worker_counts(daemon, "received.datagrams")
    return next(w for w in after if after[w] > before.get(w, 0.0))


def sockets_on_two_workers(daemon: Any, stack: ExitStack) -> tuple[socket.socket,
                                                                   socket.socket]:
    landed: dict[int, socket.socket] = {}
    for _ in range(16):
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        landed.setdefault(probe_worker(daemon, sock), sock)
        if len(landed) == 2:
            return landed[0], landed[1]
    raise AssertionError("16 sockets all landed on one worker")


def test_gauges_follow_arrival_order_across_workers(start_daemon: Any) -> None:
    daemon = start_daemon({"workers": 2, "flush_interval": 1})
    stack = ExitStack()
    with stack:
        a, b = sockets_on_two_workers(daemon, stack)
        # No flush in the middle from here: two workers swap a few milliseconds apart, and a
        # line applied between their swaps would count in the other interval.
        daemon.config_path.write_text(daemon.config_path.read_text().replace(
            "flush_interval: 1", "flush_interval: 3600"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("reloaded")
        send_in_order(daemon, a, b)
    assert daemon.stop() == 0
    last = {r["name"]: r["stats"]["value"] for r in daemon.records() if r["type"] == "gauge"}
    assert last["w.g1"] == 15
    assert last["w.g2"] == 15


def send_in_order(daemon: Any, a: socket.socket, b: socket.socket) -> None:

    def line(sock: socket.socket, data: bytes) -> None:
        sock.sendto(data, ("127.0.0.1", daemon.port))
        time.sleep(0.1)  # each line applied before the next is sent, on a busy machine too

    # absolute in worker A, deltas in worker B before (overridden) and after (applied)
    line(b, b"w.g1:+3|g")
    line(a, b"w.g1:10|g")
    line(b, b"w.g1:+5|g")
    # a later absolute in B wins over A's, with A's deltas after it
    line(a, b"w.g2:10|g")
    line(b, b"w.g2:+1|g")
    line(b, b"w.g2:20|g")
    line(a, b"w.g2:+2|g")
    line(a, b"w.g2:-7|g")
    time.sleep(0.3)


def worker_pids(daemon: Any) -> dict[int, int]:
    pids = {}
    for line in list(daemon.stderr):
        if "receive worker" in line and "started: pid" in line:
            index = int(line.split("receive worker ")[1].split()[0])
            pids[index] = int(line.split("started: pid ")[1].split()[0])
    return pids


def test_a_killed_worker_is_restarted_and_its_loss_counted(start_daemon: Any) -> None:
    daemon = start_daemon({"workers": 2, "flush_interval": 3600})
    before = worker_pids(daemon)
    sent = 0
    for _ in range(SOCKETS):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"w.k:1|c", ("127.0.0.1", daemon.port))
            sent += 1
    time.sleep(0.5)
    os.kill(before[0], signal.SIGKILL)
    warning = daemon.wait_for_log("receive worker 0 (pid")
    assert "died (signal 9)" in warning
    lost = int(warning.split("lost what it held since the last flush: ")[1].split()[0])
    assert 0 < lost < SOCKETS  # the other worker's share is not lost
    assert wait_until(lambda: worker_pids(daemon)[0] != before[0], 15)
    for _ in range(SOCKETS):  # the restarted worker takes its share again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"w.k:1|c", ("127.0.0.1", daemon.port))
            sent += 1
    time.sleep(0.5)
    assert daemon.stop() == 0
    counted = sum(r["stats"]["count"] for r in daemon.records() if r["name"] == "w.k")
    assert counted + lost == sent
    stats = {r["name"]: r["stats"]["count"] for r in daemon.records()
             if r["name"].startswith("pystatsd.workers.")
             and r["name"] != "pystatsd.workers.running"}
    assert stats["pystatsd.workers.restarts"] == 1
    assert stats["pystatsd.workers.lost_payloads"] == lost
    assert worker_counts(daemon, "received.datagrams")[0] > 0  # after the restart


def test_reload_and_hot_restart_with_workers_lose_nothing(start_daemon: Any) -> None:
    daemon = start_daemon({"workers": 2, "flush_interval": 2,
                           "self_metrics": {"enabled": False}})
    load = Load(daemon.port, seconds=9.0)
    load.start()
    time.sleep(2.0)
    daemon.config_path.write_text(daemon.config_path.read_text().replace(
        "flush_interval: 2", "flush_interval: 2\npercentiles: [50]"))
    daemon.signal(signal.SIGHUP)
    logged(daemon, "reloaded")
    time.sleep(2.0)
    daemon.signal(signal.SIGUSR2)
    pid = successor_pid(daemon)
    logged(daemon, "took over from pid")
    assert daemon.proc.wait(30) == 0
    load.join()
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    logged(daemon, "stopped; everything received was flushed and delivered")
    assert wait_until(lambda: exited(pid), timeout=10)
    daemon.kill()
    records = flushed(daemon)
    log = "".join(daemon.stderr)
    assert "died" not in log and "may be lost" not in log, log[-3000:]
    assert "did not stop" not in log and "no listener takes" not in log, log[-3000:]
    # the successor's own workers read the very sockets the first ones did
    assert log.count(f"listening on udp 127.0.0.1:{daemon.port} in 2 receive workers") == 2
    for name, total in load.sent.items():
        intervals = sorted(records[name])
        assert sum(count for _, _, count in intervals) == total, (name, intervals)
        starts = [start for start, _, _ in intervals]
        assert len(starts) == len(set(starts)), f"an interval reported twice: {intervals}"


def test_a_unix_socket_stays_in_the_daemon_and_merges_with_the_workers(
        start_daemon: Any, tmp_path: Any) -> None:
    gram = str(tmp_path / "dsd.sock")
    daemon = start_daemon({"workers": 2, "flush_interval": 3600, "listeners": [
        {"protocol": "udp"}, {"protocol": "unixgram", "path": gram}]})
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        unix.sendto(b"w.both:2|c\nw.bset:a|s\nw.bg:5|g", gram)
    time.sleep(0.1)
    for n in range(8):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"w.both:1|c\nw.bset:b%d|s\nw.bg:+1|g" % n, ("127.0.0.1", daemon.port))
    time.sleep(0.5)
    assert daemon.stop() == 0
    found = snapshot(daemon)
    assert found[("w.both", "counter", ())] == {"count": 10.0}
    assert found[("w.bset", "set", ())] == {"count": 9.0}
    assert found[("w.bg", "gauge", ())] == {"value": 13.0}  # set in the daemon, +1 × 8 after
