"""The text console of the real daemon, driven as the scripts of lyft statsrelay's and Etsy
statsd's operators drive theirs: ``status`` in lyft's layout byte for byte, every Etsy
command in Etsy's output format, and state changes only with the right to make them."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from pystatsd.set_members import member_hash
from tests.admin_helpers import Console, wait_until
from tests.conftest import free_port

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-tests"


def console_config(**admin: Any) -> dict[str, Any]:
    port = free_port(socket.SOCK_STREAM)
    return {"flush_interval": 3600,
            "admin": {"console": {"enabled": True, "port": port}, **admin}}


def console_port(daemon: Any) -> int:
    return int(daemon.wait_for_log("admin console tcp on").rsplit(":", 1)[1])


def unix_socket(daemon: Any) -> Path:
    return Path(daemon.wait_for_log("admin console unix on").split(" on ", 1)[1].strip())


@pytest.fixture
def backend_sockets() -> Any:
    """UDP sockets standing in for two statsd servers behind the relay."""
    sockets = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        sockets.append(sock)
    yield sockets
    for sock in sockets:
        sock.close()


def received_datagrams(sock: socket.socket) -> list[bytes]:
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(65535))
        except TimeoutError:
            return datagrams


def test_status_is_lyft_statsrelays_layout_byte_for_byte(start_daemon, backend_sockets) -> None:
    ports = [sock.getsockname()[1] for sock in backend_sockets]
    config = console_config()
    config["forwarders"] = {"relay": {"type": "statsd_relay", "groups": [
        {"backends": [f"127.0.0.1:{port}" for port in ports]}]}}
    daemon = start_daemon(config)
    udp = b"api.hits:1|c\napi.time:12|ms\nnot a line"
    tcp = b"api.hits:2|c\nqueue.depth:7|g\n"
    daemon.send_udp(udp)
    daemon.send_tcp(tcp)
    datagrams: list[list[bytes]] = [[], []]
    relayed: list[list[bytes]] = [[], []]

    def all_relayed() -> bool:
        for sock, got, lines in zip(backend_sockets, datagrams, relayed, strict=True):
            for datagram in received_datagrams(sock):
                got.append(datagram)
                lines.extend(datagram.splitlines())
        return sum(map(len, relayed)) >= 4

    assert wait_until(all_relayed)
    with Console(console_port(daemon)) as console:
        status = console.ask("status", until=b"\n\n")
    lines = status.split("\n")
    # lyft's lines first, in its order, then pystatsd's own in the same shape.
    sent_bytes = [sum(map(len, got)) for got in datagrams]
    expected = (
        f"global bytes_recv_udp gauge {len(udp)}\n"
        f"global bytes_recv_tcp gauge {len(tcp)}\n"
        "global total_connections gauge 1\n"
        "global last_reload timestamp 0\n"
        "global malformed_lines gauge 1\n"
        "group:0 filtered_lines gauge 0\n"
        "group:0 rejected_lines gauge 0\n"
        + "".join(f"backend:127.0.0.1:{port}:udp bytes_queued gauge 0\n"
                  f"backend:127.0.0.1:{port}:udp bytes_sent gauge {sent_bytes[i]}\n"
                  f"backend:127.0.0.1:{port}:udp relayed_lines gauge {len(relayed[i])}\n"
                  f"backend:127.0.0.1:{port}:udp dropped_lines gauge 0\n"
                  f"backend:127.0.0.1:{port}:udp failing boolean 0\n"
                  for i, port in enumerate(ports)))
    assert status[:len(expected)] == expected
    assert status.endswith("\n\n") and status.count("\n\n") == 1
    own = lines[expected.count("\n"):-2]
    assert own and all(re.fullmatch(r"\S+ \S+ (gauge|counter|boolean) \d+", line)
                       for line in own), own
    assert "pystatsd received.datagrams counter 2" in own
    assert "pystatsd rejected.bad_line counter 1" in own
    assert "forwarder:relay sent counter 4" in own

    # lyft's last_reload is the time of the last reload.
    before = int(time.time())
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded")
    with Console(console_port(daemon)) as console:
        status = console.ask("status", until=b"\n\n")
    reload_line = status.split("\n")[3]
    assert reload_line.startswith("global last_reload timestamp ")
    assert before <= int(reload_line.rsplit(" ", 1)[1]) <= time.time()
    assert daemon.stop() == 0


def test_etsy_commands_answer_in_etsys_formats_and_del_drops_what_is_flushed(
        start_daemon) -> None:
    daemon = start_daemon(console_config(token=TOKEN))
    daemon.send_udp(b"api.hits:2|c\napi.hits:1|c|@0.5\napi.errors:1|c\ntagged:1|c|#env:stage",
                    b"cpu:50|g\ncpu:+5|g\nmem:1.5|g",
                    b"lat:10|ms\nlat:30|ms\nlat:20|ms",
                    b"users:a|s\nusers:b|s\nusers:a|s")
    with Console(console_port(daemon)) as console:
        assert wait_until(lambda: "users" in console.ask("sets", until=b"END\n\n"))
        assert console.ask("help", until=b"\n\n") == (
            "Commands: status, stats, counters, timers, gauges, sets, delcounters, deltimers, "
            "delgauges, delsets, health, loglevel, auth, quit\n\n")
        assert console.ask("counters", until=b"END\n\n") == (
            "{ 'api.errors': 1, 'api.hits': 4, 'tagged;env=stage': 1 }\nEND\n\n")
        assert console.ask("gauges", until=b"END\n\n") == "{ cpu: 55, mem: 1.5 }\nEND\n\n"
        assert console.ask("timers", until=b"END\n\n") == "{ lat: [ 10, 30, 20 ] }\nEND\n\n"
        # A set keeps its members' hashes, not their text: the console shows those.
        shown = ", ".join(sorted(f"'{member_hash(m) & (2**64 - 1):016x}'" for m in (b"a", b"b")))
        assert console.ask("sets", until=b"END\n\n") == f"{{ users: [ {shown} ] }}\nEND\n\n"
        stats = console.ask("stats", until=b"END\n\n")
        assert re.match(r"uptime: \d+\nmessages\.last_msg_seen: \d+\n"
                        r"messages\.bad_lines_seen: 0\n", stats), stats
        assert "\npystatsd.received.datagrams: 4\n" in stats
        assert "\nconsole.sent: 0\n" in stats
        assert console.ask("health") == "health: up\n"
        assert console.ask("no-such-command") == "ERROR\n"

        assert console.ask(f"auth {TOKEN}") == "OK\n"
        assert console.ask("delcounters api.* nothing.here", until=b"END\n\n") == (
            "deleted: api.errors\ndeleted: api.hits\nmetric nothing.here not found\nEND\n\n")
        assert console.ask("delgauges cpu", until=b"END\n\n") == "deleted: cpu\nEND\n\n"
        assert console.ask("deltimers lat", until=b"END\n\n") == "deleted: lat\nEND\n\n"
        assert console.ask("counters", until=b"END\n\n") == (
            "{ 'tagged;env=stage': 1 }\nEND\n\n")
        assert console.ask("health down") == "health: down\n"
        assert console.ask("health") == "health: down\n"
        assert console.ask("health up") == "health: up\n"
        console.sock.sendall(b"quit\n")
        assert console.closed_by_server()
    assert daemon.stop() == 0
    flushed = {record["name"] for record in daemon.records()}
    assert {"tagged", "mem", "users"} <= flushed
    assert not {"api.hits", "api.errors", "cpu", "lat"} & flushed  # deleted: never flushed


def test_delgauges_forgets_a_carried_gauge_and_a_delta_then_starts_from_zero(
        start_daemon) -> None:
    daemon = start_daemon({"flush_interval": 1, "self_metrics": {"enabled": False}})
    socket_path = unix_socket(daemon)
    daemon.send_udp(b"level:50|g")
    assert wait_until(lambda: any(r["name"] == "level" for r in daemon.records()))
    with Console(socket_path) as console:  # the 0600 socket: no token needed
        assert console.ask("gauges", until=b"END\n\n") == "{ level: 50 }\nEND\n\n"
        assert console.ask("delgauges level", until=b"END\n\n") == "deleted: level\nEND\n\n"
        assert console.ask("gauges", until=b"END\n\n") == "{}\nEND\n\n"
        flushed_before = len(daemon.records())
        time.sleep(2.2)  # two flushes without the deleted gauge
        assert not [r for r in daemon.records()[flushed_before:] if r["name"] == "level"]
        daemon.send_udp(b"level:+5|g")
        assert wait_until(lambda: console.ask("gauges", until=b"END\n\n") != "{}\nEND\n\n")
        assert console.ask("gauges", until=b"END\n\n") == "{ level: 5 }\nEND\n\n"
    assert daemon.stop() == 0


def test_state_changes_are_refused_on_tcp_without_the_token(start_daemon) -> None:
    daemon = start_daemon(console_config())  # no token configured
    daemon.send_udp(b"kept:1|c")
    port = console_port(daemon)
    with Console(port) as console:
        assert wait_until(lambda: "kept" in console.ask("counters", until=b"END\n\n"))
        refusal = ("ERROR state-changing commands need admin.token, and none is "
                   "configured\n")
        assert console.ask("health down") == refusal
        assert console.ask("delcounters kept") == refusal
        assert console.ask("loglevel DEBUG") == refusal
        assert console.ask("auth anything") == "ERROR no admin.token is set\n"
        assert console.ask("health") == "health: up\n"
        assert "kept" in console.ask("counters", until=b"END\n\n")
    with Console(unix_socket(daemon)) as console:  # the owner's socket may
        assert console.ask("health down") == "health: down\n"
    assert daemon.stop() == 0


def test_a_configured_token_must_be_presented(start_daemon) -> None:
    daemon = start_daemon(console_config(token=TOKEN))
    with Console(console_port(daemon)) as console:
        assert console.ask("health down") == (
            "ERROR state-changing commands need the admin token\n")
        assert console.ask("auth wrong") == "ERROR bad token\n"
        assert console.ask("health down") == (
            "ERROR state-changing commands need the admin token\n")
        assert console.ask(f"auth {TOKEN}") == "OK\n"
        assert console.ask("loglevel") == "loglevel: INFO\n"
        assert console.ask("loglevel DEBUG") == "loglevel: DEBUG\n"
        assert console.ask("loglevel LOUD").startswith("ERROR unknown log level 'LOUD'")
    with Console(console_port(daemon)) as console:  # authorization lasts one connection
        assert console.ask("health down").startswith("ERROR")
    assert daemon.stop() == 0


def test_connections_are_bounded_and_idle_ones_closed(start_daemon) -> None:
    daemon = start_daemon(console_config(max_connections=2, connection_timeout=1))
    port = console_port(daemon)
    first, second = Console(port), Console(port)
    try:
        assert first.ask("health") == "health: up\n"
        assert second.ask("health") == "health: up\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            assert third.recv(100) == b"ERROR too many connections\n"
            assert third.recv(100) == b""
        time.sleep(1.5)  # past connection_timeout without a command
        assert first.closed_by_server() and second.closed_by_server()
        with Console(port) as fourth:  # the slots are free again
            assert fourth.ask("health") == "health: up\n"
    finally:
        first.close()
        second.close()
    assert daemon.stop() == 0
