"""What ``workers: N`` shows the operator, on the real daemon: each worker's self-counters in
``/metrics`` beside their sum (and in the flushed self-metrics); the console's current
interval merged from every worker as the next flush merges it (and ``del*`` reaching every
worker); and a worker killed between swapping its table and sending it, whose table is
reported lost, not lost uncounted."""

from __future__ import annotations

import ast
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from pystatsd.workers.worker import HOLD_AFTER_SWAP_ENV
from tests.admin_helpers import Console, wait_until
from tests.conftest import free_port
from tests.test_admin_http import families, http_port

pytestmark = pytest.mark.integration

SOCKETS = 48


def send_from_many_sockets(port: int, datagrams: list[bytes]) -> None:
    """Each datagram from a socket of its own, so that both workers get a share."""
    for datagram in datagrams:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, ("127.0.0.1", port))


def console_view(console: Console, table: str) -> dict[str, Any]:
    """An Etsy ``counters``/``gauges``/``sets``/``timers`` answer as a dict (Node's inspect
    of numbers, strings and short arrays of them is a Python literal too)."""
    answer = console.ask(table, until=b"\nEND\n\n")
    return dict(ast.literal_eval(answer[: -len("\nEND\n\n")]))


def counted(daemon: Any, name: str, stat: str = "count") -> float:
    return sum(r["stats"][stat] for r in daemon.records() if r["name"] == name)


def test_metrics_shows_each_workers_counters_and_they_sum_to_the_total(
        start_daemon: Any) -> None:
    daemon = start_daemon({"workers": 2, "flush_interval": 1, "admin": {
        "http": {"enabled": True, "port": free_port(socket.SOCK_STREAM)}}})
    port = http_port(daemon)
    send_from_many_sockets(daemon.port, [b"ops.c:1|c\nnot a line"] * SOCKETS)

    def per_worker(found: dict[str, Any], name: str, **labels: str) -> dict[str, float]:
        return {s.labels["worker"]: s.value for s in found[name].samples
                if all(s.labels.get(k) == v for k, v in labels.items())}

    # Workers report their counters at each flush; wait for the one that has them all.
    assert wait_until(lambda: sum(s.value for s in getattr(families(port).get(
        "pystatsd_received_datagrams"), "samples", ())) == SOCKETS, 15)
    found = families(port)
    datagrams = per_worker(found, "pystatsd_worker_received_datagrams")
    assert datagrams.keys() == {"0", "1"} and min(datagrams.values()) > 0, datagrams
    assert sum(datagrams.values()) == SOCKETS
    rejected = per_worker(found, "pystatsd_worker_rejected", reason="bad_line")
    assert sum(rejected.values()) == SOCKETS == next(
        s.value for s in found["pystatsd_rejected"].samples if s.labels["reason"] == "bad_line")
    assert rejected == datagrams  # one bad line in each datagram, wherever it landed
    assert found["pystatsd_worker_received_datagrams"].type == "counter"
    assert daemon.stop() == 0
    # The flushed self-metrics carry the same shares, by name segment.
    assert {index: counted(daemon, f"pystatsd.worker.{index}.received.datagrams")
            for index in "01"} == datagrams
    assert counted(daemon, "pystatsd.received.datagrams") == SOCKETS


def test_the_console_shows_the_merged_interval_the_next_flush_reports(
        start_daemon: Any, tmp_path: Path) -> None:
    gram = str(tmp_path / "dsd.sock")
    daemon = start_daemon({"workers": 2, "flush_interval": 3600, "listeners": [
        {"protocol": "udp"}, {"protocol": "unixgram", "path": gram}]})
    with Console(tmp_path / "state" / "console.sock") as console:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:  # the daemon's table
            unix.sendto(b"ops.c:5|c\nops.g:100|g\nops.s:own|s\nops.t:1000|ms", gram)
        # The gauge's deltas from the workers come after its value: arrival order decides.
        assert wait_until(lambda: console_view(console, "gauges").get("ops.g") == 100, 10)
        send_from_many_sockets(daemon.port, [
            b"ops.c:1|c\nops.g:%s|g\nops.s:m%d|s\nops.t:%d|ms\nops.c%d:2|c"
            % (b"+3" if n % 3 else b"-1", n % 10, n, n % 4) for n in range(SOCKETS)])
        assert wait_until(lambda: console_view(console, "counters").get("ops.c")
                          == 5 + SOCKETS, 10)
        views = {table: console_view(console, table)
                 for table in ("counters", "gauges", "sets", "timers")}
        # del* reaches the workers' tables too: the next flush no longer has the series.
        assert console.ask("delcounters ops.c0", until=b"END\n\n") == (
            "deleted: ops.c0\nEND\n\n")
    assert daemon.stop() == 0  # the next flush: the same interval, closed
    assert views["counters"].pop("ops.c0") == 2 * SOCKETS / 4
    assert counted(daemon, "ops.c0") == 0
    counters = {name: value for name, value in views["counters"].items()
                if name.startswith("ops.")}
    assert counters == {name: counted(daemon, name) for name in counters}
    assert len(counters) == 4
    assert views["gauges"]["ops.g"] == counted(daemon, "ops.g", "value")
    assert views["gauges"]["ops.g"] == 100 + 32 * 3 - 16
    assert len(views["sets"]["ops.s"]) == counted(daemon, "ops.s") == 11
    samples = views["timers"]["ops.t"]
    assert (len(samples), sum(samples), min(samples), max(samples)) == tuple(
        counted(daemon, "ops.t", stat) for stat in ("count", "sum", "min", "max"))
    assert len(samples) == SOCKETS + 1


def read_pid(reader: int, timeout: float) -> int:
    """The pid a worker writes into the FIFO ``reader`` reads once it has swapped its table
    (the hook of ``HOLD_AFTER_SWAP_ENV``): a barrier, not a guess of how long that takes."""
    end = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n") and time.monotonic() < end:
        readable, _, _ = select.select([reader], [], [], max(0.0, end - time.monotonic()))
        if readable:
            data += os.read(reader, 64)
    assert data.endswith(b"\n"), f"worker 0 did not reach its swap: {data!r}"
    return int(data)


def test_a_worker_killed_between_swap_and_send_has_its_table_counted_lost(
        start_daemon: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fifo = tmp_path / "swapped"
    os.mkfifo(fifo)
    monkeypatch.setenv(HOLD_AFTER_SWAP_ENV, f"0:{fifo}")
    daemon = start_daemon({"workers": 2, "flush_interval": 3600})
    send_from_many_sockets(daemon.port, [b"ops.k:1|c"] * SOCKETS)
    with Console(tmp_path / "state" / "console.sock") as console:
        assert wait_until(lambda: console_view(console, "counters").get("ops.k") == SOCKETS)
    # While this reader is open worker 0's next flush stops after its swap; once it is
    # closed, flushes (the restarted worker's too) are normal again.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        daemon.config_path.write_text(daemon.config_path.read_text().replace(
            "flush_interval: 3600", "flush_interval: 1"))
        daemon.signal(signal.SIGHUP)
        pid = read_pid(reader, 30)
    finally:
        os.close(reader)
    os.kill(pid, signal.SIGKILL)
    warning = daemon.wait_for_log(f"receive worker 0 (pid {pid}) died (signal 9)")
    lost = int(warning.split("since the last flush: ")[1].split()[0])
    assert lost > 0  # worker 0's share, swapped out and never sent
    assert daemon.stop() == 0
    assert counted(daemon, "ops.k") + lost == SOCKETS
    assert counted(daemon, "pystatsd.workers.lost_payloads") == lost
    assert counted(daemon, "pystatsd.workers.lost_series") == 1
    assert counted(daemon, "pystatsd.workers.restarts") == 1
