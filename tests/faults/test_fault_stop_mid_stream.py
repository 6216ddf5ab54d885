"""Issue 11 item 8: at SIGTERM, what TCP clients already delivered to the kernel is read and
flushed; what is cut (a partial last line) is counted and logged, truthfully."""

from __future__ import annotations

import re
import signal
import socket
import struct
import threading
import time
from typing import Any

import pytest
from fault_helpers import connect, flushed, prefix, status, wait_for

pytestmark = pytest.mark.integration

LINE = b"fault.stream:1|c\n"
HALF = len(LINE) // 2
TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info


class StreamingClient(threading.Thread):
    """Sends LINE in two halves, again and again (``flood``: 4,000 lines per send, faster than
    the daemon reads, so its kernel holds a full receive queue at the stop), until the daemon
    resets the connection; counts what each send() returned."""

    def __init__(self, port: int, flood: bool) -> None:
        super().__init__(daemon=True)
        self.pieces = (LINE * 4000,) if flood else (LINE[:HALF], LINE[HALF:])
        self.pause = 0.0 if flood else 0.0003
        self.sock = connect(port)
        self.sock.settimeout(3)
        self.sent = 0
        self.acked = 0
        self.error: OSError | None = None

    def run(self) -> None:
        end = time.monotonic() + 20
        try:
            while time.monotonic() < end:
                for piece in self.pieces:
                    self.sent += self.sock.send(piece)
                    time.sleep(self.pause)
        except OSError as exc:
            self.error = exc
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        self.acked = struct.unpack_from("=Q", info, TCPI_BYTES_ACKED)[0] - 1  # less the SYN
        self.sock.close()


@pytest.mark.parametrize(("clients", "flood"), [(1, False), (4, False), (2, True)])
def test_what_the_kernel_acknowledged_before_sigterm_is_flushed(start_fault_daemon: Any,
                                                                clients: int,
                                                                flood: bool) -> None:
    daemon = start_fault_daemon({"flush_interval": 3600, "listeners": [{"protocol": "tcp"}]})
    streams = [StreamingClient(daemon.port, flood) for _ in range(clients)]
    for stream in streams:
        stream.start()
    wait_for(lambda: status(daemon)["counters"].get("listener.tcp.connections") == clients)
    time.sleep(1.0)
    daemon.proc.send_signal(signal.SIGTERM)
    for stream in streams:
        stream.join(30)
        # Reset by the daemon; in a flood the client may instead sit behind the zero window
        # the daemon's full queue left, which a closed socket never reopens.
        expected = (ConnectionError, TimeoutError) if flood else ConnectionError
        assert isinstance(stream.error, expected), stream.error
    assert daemon.proc.wait(30) == 0

    acked = sum(s.acked for s in streams)
    whole_lines = sum(s.acked // len(LINE) for s in streams)
    cut = [s.acked % len(LINE) for s in streams if s.acked % len(LINE)]
    assert whole_lines > 100
    records = daemon.records()
    assert flushed(records, "fault.stream") == whole_lines
    assert flushed(records, "pystatsd." + prefix("tcp", daemon.port) + ".cut_lines") == len(cut)
    # Paced, what send() returned was acknowledged, but for the last pieces each client wrote
    # after the daemon's shutdown: its kernel refused those (it reset the connection). In a
    # flood, the client's own send queue holds more, which never reached the daemon's kernel.
    unacked = sum(s.sent for s in streams) - acked
    assert 0 <= unacked <= (unacked if flood else clients * 2 * len(LINE))
    log = "".join(daemon.stderr)
    if cut:
        said = re.search(r"stopped (\d+) connections; read (\d+) bytes, lost (\d+) bytes: (\d+) "
                         r"partial lines \((\d+) bytes\) cut mid-line, 0 bytes the kernel held "
                         r"unread", log)
        assert said, log
        assert [int(n) for n in said.groups()] == [clients, acked, sum(cut), len(cut), sum(cut)]
    else:
        assert f"stopped {clients} connections; read all {acked} bytes they delivered, lost " \
               "nothing" in log
