"""carbon routes and statsite-proxy servers changed at runtime on the real daemon, through the
admin console (carbon-relay-ng's addRoute/modRoute/delRoute syntax) and the HTTP ``/routes``
endpoints, while lines flow: exact counts at TCP sinks, a real carbon-cache, refused changes
that say why and change nothing, and the overlay kept across a reload of the section."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from carbon_servers import CarbonCache, FakeCarbon, GraphiteStream, needs_carbon, wait_for
from test_statsite_proxy import StatsiteSink

from tests.admin_helpers import Console
from tests.conftest import free_port
from tests.test_routes_live import http

pytestmark = pytest.mark.integration

TOKEN = "carbon-live-token"


def numbers(carbon: FakeCarbon) -> list[int]:
    return [int(path.rsplit(".n", 1)[1]) for path, _, _ in carbon.snapshot()]


def ports(daemon: Any) -> tuple[int, int]:
    console = int(daemon.wait_for_log("admin console tcp on").rsplit(":", 1)[1])
    web = int(daemon.wait_for_log("admin http on").rsplit(":", 1)[1])
    return console, web


def relay_daemon(start_daemon: Any, main: FakeCarbon, statsite: StatsiteSink) -> Any:
    graphite_port, statsite_port = free_port(), free_port()
    daemon = start_daemon({
        "flush_interval": 3600, "mode": "relay",
        "admin": {"token": TOKEN,
                  "console": {"enabled": True, "port": free_port(socket.SOCK_STREAM)},
                  "http": {"enabled": True, "port": free_port(socket.SOCK_STREAM)}},
        "listeners": [{"protocol": "tcp", "port": graphite_port, "format": "graphite"},
                      {"protocol": "tcp", "port": statsite_port, "format": "statsite"}],
        "forwarders": {
            "carbon": {"type": "carbon_routes", "backoff_min": 0.05, "backoff_max": 0.3,
                       "routes": [{"key": "main", "type": "send_all_match", "destinations": [
                           {"address": f"127.0.0.1:{main.port}"}]}]},
            "proxy": {"type": "statsite_proxy", "servers": [
                {"address": f"127.0.0.1:{statsite.port}", "weight": 100}]}}})
    daemon.graphite_port, daemon.statsite_port = graphite_port, statsite_port
    return daemon


@pytest.fixture
def sinks() -> Any:
    main, copy, statsite, second = FakeCarbon(), FakeCarbon(), StatsiteSink(), StatsiteSink()
    yield main, copy, statsite, second
    for sink in (main, copy, statsite, second):
        sink.close()


def test_console_routes_change_under_a_stream_and_survive_a_reload(start_daemon: Any,
                                                                   sinks: Any) -> None:
    main, copy, statsite, second = sinks
    daemon = relay_daemon(start_daemon, main, statsite)
    console_port, _ = ports(daemon)
    stream = GraphiteStream(daemon.graphite_port)
    with Console(console_port) as console:
        assert console.ask(f"auth {TOKEN}") == "OK\n"
        stream.until(200)
        # carbon-relay-ng's addRoute: type, route options, then each destination and its own
        assert console.ask(f"route add carbon/copy sendAllMatch prefix=stream. "
                           f"127.0.0.1:{copy.port} pickle=false") == "OK\n"
        stream.until(200)
        listing = console.ask("route list", until=b"END\n\n")
        assert (f"carbon/copy type=sendAllMatch prefix=stream. destinations=127.0.0.1:"
                f"{copy.port} origin=runtime") in listing
        assert f"carbon/main type=sendAllMatch destinations=127.0.0.1:{main.port} " \
               "origin=config" in listing
        assert f"proxy/127.0.0.1:{statsite.port} weight=100 origin=config" in listing

        # refused, each saying why, nothing changed
        assert console.ask("route add carbon/bad sendNowhere 127.0.0.1:1") \
            .startswith("ERROR give the route type first")
        assert console.ask("route mod carbon/copy regex=([") \
            .startswith("ERROR forwarders.carbon.routes[1]: bad regular expression")
        assert console.ask("route mod carbon/copy flush=100") \
            .startswith("ERROR unknown route option 'flush=100'")
        assert console.ask("route moddest carbon/copy 0 spool=true") \
            .startswith("ERROR forwarders.carbon.routes[1].destinations[0]: the spool")
        assert console.ask("route add carbon/copy sendAllMatch 127.0.0.1:1") \
            .startswith("ERROR route copy exists")

        # a reload of the carbon section keeps the runtime route on top of the new file
        config = yaml.safe_load(daemon.config_path.read_text())
        config["forwarders"]["carbon"]["queue_size"] = 8192
        daemon.config_path.write_text(yaml.safe_dump(config))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("route overlay applied")
        daemon.wait_for_log("reloaded")
        stream.until(200)
        assert "carbon/copy" in console.ask("route list", until=b"END\n\n")

        # modRoute: the copy takes nothing from now on; then delRoute
        assert console.ask("route mod carbon/copy prefix=elsewhere.") == "OK\n"
        stream.until(200)
        assert console.ask("route del carbon/copy") == "OK\n"
        stream.until(100)

        # the statsite ring: a server added, refused a zero weight, the first one removed
        first, added = f"proxy/127.0.0.1:{statsite.port}", f"proxy/127.0.0.1:{second.port}"
        assert console.ask(f"route add {added} 100") == "OK\n"
        assert console.ask(f"route mod {added} 0").startswith("ERROR servers[1].weight")
        daemon.send_tcp(b"".join(b"ring.%d:1|c\n" % i for i in range(40)),
                        port=daemon.statsite_port)
        wait_for(lambda: len(statsite.samples) + len(second.samples) == 40, what="on the ring")
        assert statsite.samples and second.samples
        assert console.ask(f"route del {first}") == "OK\n"
        daemon.send_tcp(b"".join(b"after.%d:1|c\n" % i for i in range(40)),
                        port=daemon.statsite_port)
        wait_for(lambda: sum(s.name.startswith("after.") for s in second.samples) == 40,
                 what="every command at the server left")
        assert not any(s.name.startswith("after.") for s in statsite.samples)
    sent = stream.stop()
    wait_for(lambda: len(main.snapshot()) == sent, what="every line at main")
    assert sorted(numbers(main)) == list(range(sent))
    copied = numbers(copy)
    assert len(copied) >= 400 and sorted(copied) == list(range(min(copied), max(copied) + 1))
    assert "carbon" not in orjson.loads((daemon.config_path.parent / "state" / "routes.json")
                                        .read_bytes())["forwarders"]
    assert daemon.stop() == 0


def test_http_puts_a_statsite_server_and_a_carbon_route(start_daemon: Any, sinks: Any) -> None:
    main, copy, statsite, second = sinks
    daemon = relay_daemon(start_daemon, main, statsite)
    _, web = ports(daemon)
    new_server = f"127.0.0.1:{second.port}"
    status, _, body = http(web, f"/routes/proxy/{new_server}", "PUT", token=TOKEN,
                           body=orjson.dumps({"weight": 100}))
    assert status == 200, body
    status, _, body = http(web, f"/routes/proxy/{new_server}", "PUT", token=TOKEN,
                           body=orjson.dumps({"weight": 0}))
    assert status == 400 and "weight" in body
    keys = [f"svc.{i}" for i in range(40)]
    daemon.send_tcp(b"".join(f"{key}:1|c\n".encode() for key in keys), port=daemon.statsite_port)
    wait_for(lambda: len(statsite.samples) + len(second.samples) == 40, what="commands")
    assert statsite.samples and second.samples  # the ring now shares the keys out
    assert statsite.connections == 1

    status, _, body = http(web, "/routes/carbon/hashed", "PUT", token=TOKEN, body=orjson.dumps(
        {"type": "consistent_hashing", "prefix": "hashed.",
         "destinations": [{"address": f"127.0.0.1:{copy.port}", "instance": "a"}]}))
    assert status == 200, body
    status, _, body = http(web, "/routes/carbon/hashed", "PUT", token=TOKEN, body=orjson.dumps(
        {"type": "consistent_hashing", "destinations": [{"address": "x:1", "bogus": 1}]}))
    assert status == 400 and "bogus" in body
    routes = orjson.loads(http(web, "/routes")[2])["routes"]
    assert [r["name"] for r in routes["carbon"]] == ["main", "hashed"]
    assert [r["name"] for r in routes["proxy"]] == [f"127.0.0.1:{statsite.port}", new_server]
    stamp = int(time.time())
    daemon.send_tcp(b"hashed.a 1 %d\nother.b 2 %d\n" % (stamp, stamp), port=daemon.graphite_port)
    wait_for(lambda: len(copy.snapshot()) == 1 and len(main.snapshot()) == 2, what="routed")
    assert copy.snapshot() == [("hashed.a", 1.0, float(stamp))]
    assert http(web, "/routes/carbon/hashed", "DELETE", token=TOKEN)[0] == 200
    assert daemon.stop() == 0


@needs_carbon
def test_a_route_added_at_runtime_lands_in_a_real_carbon_cache(start_daemon: Any, sinks: Any,
                                                               tmp_path: Path) -> None:
    main, _, statsite, _ = sinks
    daemon = relay_daemon(start_daemon, main, statsite)
    console_port, _ = ports(daemon)
    with CarbonCache(tmp_path / "carbon") as cache, Console(console_port) as console:
        assert console.ask(f"auth {TOKEN}") == "OK\n"
        assert console.ask(f"route add carbon/cache sendFirstMatch  127.0.0.1:{cache.line_port}"
                           f" prefix=app.  127.0.0.1:{cache.pickle_port} pickle=true") == "OK\n"
        stamp = int(time.time()) // 10 * 10 - 20
        daemon.send_tcp(b"app.requests 5 %d\nsys.load 7 %d\n" % (stamp, stamp + 10),
                        port=daemon.graphite_port)
        wait_for(lambda: cache.values("app.requests", stamp) == {stamp: 5.0}
                 and cache.values("sys.load", stamp) == {stamp + 10: 7.0}, timeout=30,
                 what="both datapoints in whisper (plaintext and pickle)")
    assert daemon.stop() == 0
