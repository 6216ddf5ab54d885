"""A carbon route added at runtime with a spooling destination, through a hot restart
(SIGUSR2) during that destination's outage: the successor applies the overlay and waits for
the predecessor to release the spool before starting the relay, then sends the spool; every
line lands once."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from carbon_servers import FakeCarbon, free_port, wait_for

from tests.admin_helpers import Console
from tests.conftest import free_port as free_loopback_port

pytestmark = pytest.mark.integration


def test_a_runtime_spooling_route_survives_a_hot_restart_during_an_outage(
        start_daemon: Any) -> None:
    graphite_port, down_port = free_loopback_port(), free_port()
    main = FakeCarbon()
    daemon = start_daemon({
        "flush_interval": 3600, "mode": "relay",
        "admin": {"console": {"enabled": True, "port": free_loopback_port(socket.SOCK_STREAM)}},
        "listeners": [{"protocol": "tcp", "port": graphite_port, "format": "graphite"}],
        "forwarders": {"carbon": {
            "type": "carbon_routes", "backoff_min": 0.05, "backoff_max": 0.3,
            "routes": [{"key": "main", "type": "send_all_match",
                        "destinations": [{"address": f"127.0.0.1:{main.port}"}]}]}}})
    socket_path = Path(daemon.wait_for_log("admin console unix on").split(" on ", 1)[1].strip())
    back: FakeCarbon | None = None
    try:
        with Console(socket_path) as console:  # the 0600 socket: no token needed
            assert console.ask(f"route add backup sendAllMatch 127.0.0.1:{down_port} "
                               "spool=true") == "OK\n"
        stamp = int(time.time())
        daemon.send_tcp(b"".join(b"hr.n%d 1 %d\n" % (i, stamp) for i in range(100)),
                        port=graphite_port)
        wait_for(lambda: len(main.snapshot()) == 100, what="main has the first lines")
        daemon.signal(signal.SIGUSR2)
        wait_for(lambda: any("took over from pid" in line for line in daemon.stderr), 30,
                 what="the successor took over")
        assert daemon.proc.wait(30) == 0
        log = "".join(daemon.stderr)
        assert "route overlay not applied" not in log, log
        daemon.send_tcp(b"".join(b"hr.n%d 1 %d\n" % (i, stamp) for i in range(100, 200)),
                        port=graphite_port)
        wait_for(lambda: len(main.snapshot()) == 200, what="main has every line")
        back = FakeCarbon(port=down_port)
        wait_for(lambda: len(back.snapshot()) == 200, timeout=30,
                 what="the backup's spool and queue delivered by the successor")
        time.sleep(0.5)
        assert sorted(int(p.rsplit(".n", 1)[1]) for p, _, _ in back.snapshot()) == \
            list(range(200))
        assert sorted(int(p.rsplit(".n", 1)[1]) for p, _, _ in main.snapshot()) == \
            list(range(200))
    finally:
        pid_line = next((line for line in daemon.stderr if "started successor pid" in line),
                        None)
        if pid_line is not None:
            pid = int(pid_line.split("successor pid ")[1].split(":")[0])
            try:
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda: not Path(f"/proc/{pid}").exists()
                         or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                         == "Z", what="the successor stopped")
            except (ProcessLookupError, FileNotFoundError):
                pass
        main.close()
        if back is not None:
            back.close()
