"""The HTTP admin interface of the real daemon, as a load balancer, a Kubernetes probe and a
Prometheus server use it."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.admin_helpers import Console, http, wait_until
from tests.conftest import free_port

pytestmark = pytest.mark.integration

TOKEN = "http-t0ken"


def http_config(**admin: Any) -> dict[str, Any]:
    return {"flush_interval": 3600,
            "admin": {"http": {"enabled": True, "port": free_port(socket.SOCK_STREAM)},
                      **admin}}


def http_port(daemon: Any) -> int:
    return int(daemon.wait_for_log("admin http on").rsplit(":", 1)[1])


def families(port: int) -> dict[str, Any]:
    status, content_type, body = http(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=")
    return {family.name: family for family in text_string_to_metric_families(body)}


def sample(family: Any, **labels: str) -> float:
    found = [s.value for s in family.samples
             if all(s.labels.get(k) == v for k, v in labels.items())
             and not s.name.endswith("_created")]
    assert len(found) == 1, (family, labels)
    return float(found[0])


def test_metrics_exposes_every_self_metric_and_forwarder_stat(start_daemon) -> None:
    config = http_config()
    config["forwarders"] = {"console": {},
                            "relay": {"type": "statsd_relay",
                                      "groups": [{"backends": ["127.0.0.1:9:udp"]}]}}
    daemon = start_daemon(config)
    port = http_port(daemon)
    payloads = (b"a:1|c\nb:2|c\nnot a metric", b"c:3|ms")
    daemon.send_udp(*payloads)
    assert wait_until(lambda: "pystatsd_received_datagrams" in families(port)
                      and sample(families(port)["pystatsd_received_datagrams"]) == 2)
    found = families(port)
    # The receive counts are current without waiting for a flush.
    assert found["pystatsd_received_datagrams"].type == "counter"
    assert sample(found["pystatsd_received_lines"]) == 4
    assert sample(found["pystatsd_rejected"], reason="bad_line") == 1
    received = found["pystatsd_listener_received_bytes"]
    assert sample(received, protocol="udp") == sum(map(len, payloads))
    # Forwarder stats by their declared kind, one label per forwarder (and backend).
    assert found["pystatsd_forwarder_submitted"].type == "counter"
    assert found["pystatsd_forwarder_queued"].type == "gauge"
    assert sample(found["pystatsd_forwarder_submitted"], forwarder="relay") == 4  # raw lines
    backend = found["pystatsd_forwarder_backend_queued_bytes"]
    assert backend.type == "gauge"
    assert {s.labels["backend"] for s in backend.samples} == {"127_0_0_1_9_udp"}
    assert found["pystatsd_forwarder_backend_relayed_lines"].type == "counter"
    assert sample(found["pystatsd_health_up"]) == 1
    assert "process_resident_memory_bytes" in found
    assert daemon.stop() == 0


def test_healthz_status_and_readyz_follow_health_down(start_daemon) -> None:
    daemon = start_daemon(http_config(token=TOKEN))
    port = http_port(daemon)
    assert http(port, "/healthz")[::2] == (200, "ok\n")
    assert http(port, "/readyz")[::2] == (200, "ready\n")
    status, content_type, body = http(port, "/status")
    assert (status, content_type) == (200, "application/json")
    described = json.loads(body)
    assert described["pid"] == daemon.proc.pid and "counters" in described

    # Drain from a load balancer: unready, still alive, still receiving.
    assert http(port, "/health/down", "POST", TOKEN)[::2] == (200, "health: down\n")
    status, _, body = http(port, "/readyz")
    assert (status, body) == (503, "health is set down\n")
    assert http(port, "/healthz")[0] == 200
    daemon.send_udp(b"still.counted:1|c")
    assert http(port, "/health/up", "POST", TOKEN)[0] == 200
    assert http(port, "/readyz")[0] == 200
    assert http(port, "/nowhere")[0] == 404
    assert daemon.stop() == 0
    assert "still.counted" in {r["name"] for r in daemon.records()}


def test_readyz_is_unready_while_a_forwarder_cannot_deliver(start_daemon) -> None:
    dead = free_port(socket.SOCK_STREAM)  # nothing listens here
    config = http_config()
    config["shutdown_timeout"] = 1  # the stop cannot deliver to the dead backend: do not wait 10 s
    config["forwarders"] = {"relay": {"type": "statsd_relay",
                                      "groups": [{"backends": [f"127.0.0.1:{dead}:tcp"]}]}}
    daemon = start_daemon(config)
    port = http_port(daemon)
    daemon.send_udp(b"lost:1|c")

    def unready() -> bool:
        status, _, body = http(port, "/readyz")
        return status == 503 and f"backend.127_0_0_1_{dead}_tcp.failing" in body

    assert wait_until(unready, timeout=15)
    assert http(port, "/healthz")[0] == 200  # alive: restarting it would not help
    assert daemon.stop() == 0


def test_post_commands_need_the_token(start_daemon) -> None:
    daemon = start_daemon(http_config(token=TOKEN))
    port = http_port(daemon)
    assert http(port, "/health/down", "POST")[::2] == (
        403, "state-changing commands need the admin token\n")
    assert http(port, "/health/down", "POST", "wrong")[0] == 403
    assert http(port, "/loglevel/DEBUG", "POST", "wrong")[0] == 403
    assert http(port, "/readyz")[0] == 200
    assert http(port, "/loglevel/DEBUG", "POST", TOKEN)[::2] == (200, "loglevel: DEBUG\n")
    assert http(port, "/loglevel")[::2] == (200, "DEBUG\n")
    assert http(port, "/loglevel/LOUD", "POST", TOKEN)[0] == 400
    # At DEBUG the daemon now logs each admin request, also after a log reopen (SIGUSR1).
    daemon.signal(signal.SIGUSR1)
    daemon.wait_for_log("log reopened")
    http(port, "/healthz")
    daemon.wait_for_log('"GET /healthz HTTP/1.1" 200')
    assert daemon.stop() == 0


def test_without_a_token_http_changes_nothing(start_daemon) -> None:
    daemon = start_daemon(http_config())
    port = http_port(daemon)
    assert http(port, "/health/down", "POST", "guess")[::2] == (
        403, "state-changing commands need admin.token, and none is configured\n")
    assert http(port, "/readyz")[0] == 200
    # The owner's 0600 console socket still may; HTTP sees the result.
    socket_path = daemon.wait_for_log("admin console unix on").split(" on ", 1)[1].strip()
    with Console(Path(socket_path)) as console:
        assert console.ask("health down") == "health: down\n"
    assert http(port, "/readyz")[0] == 503
    assert daemon.stop() == 0
