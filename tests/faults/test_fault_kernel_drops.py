"""Issue 11 item 5: what the kernel drops on a UDP socket is counted, shown and explained."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from fault_helpers import (
    continue_process,
    flushed,
    kernel_udp_drops,
    prefix,
    status,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.integration

SENT = 3000


def test_kernel_drops_are_counted_exactly_and_sent_equals_aggregated_plus_dropped(
        start_fault_daemon: Any) -> None:
    # A tiny receive buffer and a stopped daemon: the kernel must drop most of the burst.
    daemon = start_fault_daemon({
        "flush_interval": 3600, "forwarders": {"console": {}},
        "listeners": [{"protocol": "udp", "receive_buffer_bytes": 4096}]})
    drops_key = prefix("udp", daemon.port) + ".kernel_drops"
    stop_process(daemon)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(SENT):
                sender.sendto(b"fault.sent:1|c", ("127.0.0.1", daemon.port))
        kernel_says = kernel_udp_drops(daemon.proc.pid, daemon.port)
    finally:
        continue_process(daemon)
    assert 0 < kernel_says < SENT

    # --status shows it within the watcher's period, before any flush.
    state = wait_for(lambda: (s := status(daemon))["counters"].get(drops_key) and s)
    assert state["counters"][drops_key] == kernel_says
    assert state["listener_state"][0]["kernel_drops"] == kernel_says
    warning = daemon.wait_for_log("the kernel dropped")
    assert "receive_buffer_bytes" in warning and "net.core.rmem_max" in warning
    assert f"{kernel_says} since start" in warning

    assert daemon.stop() == 0
    records = daemon.records()
    aggregated = flushed(records, "fault.sent")
    dropped = flushed(records, "pystatsd." + drops_key)
    assert dropped == kernel_says
    assert aggregated + dropped == SENT
    assert sum("the kernel dropped" in line for line in daemon.stderr) == 1  # rate-limited
