"""Live routing on the real daemon, as a carbon-relay-ng operator does it: ``route add`` over
the console sends the next line to the new group's backend, the change survives a restart and
a reload, ``route del`` reverts it, and nobody without the token changes anything over TCP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.admin_helpers import Console, wait_until
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-routes"


class Sink:
    """A UDP socket standing in for a statsd server behind the relay."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.lines: list[bytes] = []

    def read(self) -> list[bytes]:
        while True:
            try:
                self.lines.extend(self.sock.recv(65535).split(b"\n"))
            except TimeoutError:
                return self.lines

    def got(self, line: bytes) -> bool:
        return line in self.read()


@pytest.fixture
def sinks() -> Any:
    made = [Sink() for _ in range(3)]
    yield made
    for sink in made:
        sink.sock.close()


def http(port: int, path: str, method: str = "GET", token: str | None = None,
         body: bytes | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of one request to the admin HTTP port."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=body)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


def relay_config(first: Sink, **admin: Any) -> dict[str, Any]:
    return {"flush_interval": 3600,
            "admin": {"console": {"enabled": True, "port": free_port(socket.SOCK_STREAM)},
                      "http": {"enabled": True, "port": free_port(socket.SOCK_STREAM)},
                      **admin},
            "forwarders": {"relay": {"type": "statsd_relay", "groups": [
                {"name": "main", "backends": [first.address]}]}}}


def ports(daemon: Any) -> tuple[int, int]:
    console = int(daemon.wait_for_log("admin console tcp on").rsplit(":", 1)[1])
    web = int(daemon.wait_for_log("admin http on").rsplit(":", 1)[1])
    return console, web


def socket_path(daemon: Any) -> Path:
    return Path(daemon.wait_for_log("admin console unix on").split(" on ", 1)[1].strip())


def test_route_added_over_the_console_takes_the_next_line_and_survives_a_restart(
        start_daemon: Any, sinks: list[Sink], tmp_path: Path) -> None:
    main, extra, _ = sinks
    config = relay_config(main, token=TOKEN)
    daemon = start_daemon(config)
    console_port, _ = ports(daemon)
    with Console(console_port) as console:
        assert console.ask(f"auth {TOKEN}") == "OK\n"
        assert console.ask(f"route add api ^api\\. {extra.address}") == "OK\n"
        daemon.send_udp(b"api.hits:1|c\ndb.hits:1|c")
        assert wait_until(lambda: extra.got(b"api.hits:1|c"))
        assert wait_until(lambda: main.got(b"db.hits:1|c"))
        assert b"db.hits:1|c" not in extra.read()  # the pattern keeps it out of the group
        listing = console.ask("route list", until=b"END\n\n")
        assert "route patt <key> [pattern]" in console.ask("route help", until=b"\n\n")
    assert f"relay/api pattern=^api\\. backends={extra.address} origin=runtime" in listing
    assert f"relay/main pattern= backends={main.address} origin=config" in listing
    saved = orjson.loads((tmp_path / "state" / "routes.json").read_bytes())
    assert saved["forwarders"]["relay"]["api"]["backends"] == [extra.address]
    assert daemon.stop() == 0

    restarted = start_daemon(config)
    restarted.wait_for_log("route overlay applied")
    restarted.send_udp(b"api.after_restart:1|c")
    assert wait_until(lambda: extra.got(b"api.after_restart:1|c"))
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "pystatsd", "-c", str(restarted.config_path), "--status"],
        capture_output=True, cwd=REPO, check=True).stdout)
    assert list(status["route_overlay"]["forwarders"]["relay"]) == ["api"]

    console_port, _ = ports(restarted)
    with Console(console_port) as console:
        console.ask(f"auth {TOKEN}")
        assert console.ask("route del api") == "OK\n"
        restarted.send_udp(b"api.after_del:1|c")
        assert wait_until(lambda: main.got(b"api.after_del:1|c"))
        assert b"api.after_del:1|c" not in extra.read()
    saved = orjson.loads((tmp_path / "state" / "routes.json").read_bytes())
    assert saved["forwarders"] == {}  # nothing left over the file


def test_patt_and_mod_change_a_config_group_and_a_reload_keeps_the_change(
        start_daemon: Any, sinks: list[Sink]) -> None:
    main, extra, third = sinks
    daemon = start_daemon(relay_config(main))
    with Console(socket_path(daemon)) as console:  # the 0600 socket needs no token
        assert console.ask(f"route mod main {extra.address}") == "OK\n"
        assert console.ask("route patt main ^keep\\.") == "OK\n"
        daemon.send_udp(b"keep.a:1|c\ndrop.a:1|c")
        assert wait_until(lambda: extra.got(b"keep.a:1|c"))
        assert b"drop.a:1|c" not in extra.read() + main.read()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("reloaded")
        daemon.send_udp(b"keep.after_reload:1|c")
        assert wait_until(lambda: extra.got(b"keep.after_reload:1|c"))
        assert console.ask(f"route mod main nowhere {third.address}").startswith("ERROR ")
        assert console.ask("route add main " + third.address).startswith("ERROR route main exists")
        assert console.ask("route patt main ([").startswith("ERROR ")  # a bad regex
        daemon.send_udp(b"keep.after_refusals:1|c")  # ... and the refusals changed nothing
        assert wait_until(lambda: extra.got(b"keep.after_refusals:1|c"))
        assert console.ask("route reset") == "OK reset relay\n"
        daemon.send_udp(b"drop.after_reset:1|c")
        assert wait_until(lambda: main.got(b"drop.after_reset:1|c"))


def test_route_changes_are_refused_without_the_token(start_daemon: Any,
                                                     sinks: list[Sink]) -> None:
    main, extra, _ = sinks
    daemon = start_daemon(relay_config(main, token=TOKEN))
    console_port, web = ports(daemon)
    with Console(console_port) as console:
        assert console.ask(f"route add api {extra.address}") == \
            "ERROR state-changing commands need the admin token\n"
        assert "relay/api" not in console.ask("route list", until=b"END\n\n")
    body = orjson.dumps({"backends": [extra.address]})
    assert http(web, "/routes/relay/api", "PUT", body=body)[0] == 403
    assert http(web, "/routes/relay/api", "PUT", token="wrong", body=body)[0] == 403
    daemon.send_udp(b"api.refused:1|c")
    assert wait_until(lambda: main.got(b"api.refused:1|c"))
    assert extra.read() == []


def test_http_routes_endpoints_list_add_change_and_delete(start_daemon: Any,
                                                          sinks: list[Sink]) -> None:
    main, extra, _ = sinks
    daemon = start_daemon(relay_config(main, token=TOKEN))
    _, web = ports(daemon)
    status, kind, body = http(web, "/routes/relay/api", "PUT", token=TOKEN,
                              body=orjson.dumps({"filter": "^api", "backends": [extra.address]}))
    assert status == 200, body
    daemon.send_udp(b"api.http:1|c")
    assert wait_until(lambda: extra.got(b"api.http:1|c"))
    status, kind, body = http(web, "/routes")
    assert status == 200 and kind == "application/json"
    routes = orjson.loads(body)
    assert [r["name"] for r in routes["routes"]["relay"]] == ["main", "api"]
    assert list(routes["overlay"]["forwarders"]["relay"]) == ["api"]
    status, _, body = http(web, "/routes/relay/api", "PUT", token=TOKEN,
                           body=orjson.dumps({"backends": ["not an address"]}))
    assert status == 400 and "backends" in body
    assert http(web, "/routes/relay/api", "DELETE", token=TOKEN)[0] == 200
    assert http(web, "/routes/relay/api", "DELETE", token=TOKEN)[0] == 404
    daemon.send_udp(b"api.deleted:1|c")
    assert wait_until(lambda: main.got(b"api.deleted:1|c"))
    assert b"api.deleted:1|c" not in extra.read()


def test_routes_reset_from_the_command_line_drops_the_overlay(start_daemon: Any,
                                                              sinks: list[Sink],
                                                              tmp_path: Path) -> None:
    main, extra, _ = sinks
    config = relay_config(main)
    daemon = start_daemon(config)
    with Console(socket_path(daemon)) as console:
        assert console.ask(f"route add api {extra.address}") == "OK\n"
    reset = subprocess.run(
        [sys.executable, "-m", "pystatsd", "-c", str(daemon.config_path), "--routes-reset"],
        capture_output=True, text=True, cwd=REPO)
    assert reset.returncode == 0, reset.stderr
    assert "relay" in reset.stdout
    daemon.send_udp(b"api.reset:1|c")
    assert wait_until(lambda: main.got(b"api.reset:1|c"))
    assert daemon.stop() == 0
    # With no daemon running, the option removes the file itself.
    (tmp_path / "state" / "routes.json").write_text('{"version": 1, "forwarders": {}}')
    offline = subprocess.run(
        [sys.executable, "-m", "pystatsd", "-c", str(daemon.config_path), "--routes-reset"],
        capture_output=True, text=True, cwd=REPO)
    assert offline.returncode == 0, offline.stderr
    assert not (tmp_path / "state" / "routes.json").exists()
