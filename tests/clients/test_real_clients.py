"""Each real client, unmodified, against the real daemon: every metric type it has, value by
value in the flushed output, negative gauges included. DogStatsD clients (``datadog``,
``aiodogstatsd``, ``hot-shots``) talk to a ``gauge_sign: absolute`` listener, the Etsy ones
(jsocol ``statsd``, ``node-statsd``) to a default (``delta``) one, as docs/input-formats.md
tells users to set them up."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import Any

import pytest

from tests.clients.conftest import by_series
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def start(start_daemon: Any) -> tuple[Any, int, int]:
    """A daemon with an Etsy (delta) and a DogStatsD (absolute) UDP listener and one flush,
    the final one (at stop)."""
    etsy, dogstatsd = free_port(), free_port()
    daemon = start_daemon({"flush_interval": 3600, "listeners": [
        {"protocol": "udp", "address": "127.0.0.1", "port": etsy},
        {"protocol": "udp", "address": "127.0.0.1", "port": dogstatsd,
         "gauge_sign": "absolute"}]})
    return daemon, etsy, dogstatsd


def flushed(daemon: Any) -> dict[tuple[str, str, tuple[Any, ...]], Any]:
    time.sleep(0.3)  # the last datagrams reach the daemon before SIGTERM stops the listener
    assert daemon.stop() == 0
    return by_series(daemon.records())


def distribution(stats: dict[str, float]) -> dict[str, float]:
    return {key: stats[key] for key in ("count", "sum", "min", "max")}


def test_datadog_python_client(start_daemon: Any) -> None:
    from datadog.dogstatsd import DogStatsd

    daemon, _, port = start(start_daemon)
    client = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True,
                       origin_detection_enabled=False, constant_tags=["app:shop"])
    client.increment("dd.hits", 3, tags=["env:prod"])
    client.decrement("dd.hits", 1, tags=["env:prod"])
    client.gauge("dd.temp", 3)
    client.gauge("dd.temp", -5)  # means "set to -5": the DogStatsD listener takes it so
    client.gauge("dd.level", -2.5)
    client.histogram("dd.size", 10)
    client.histogram("dd.size", 30)
    client.distribution("dd.latency", 7)
    client.timing("dd.query", 12)
    client.timing("dd.query", 4)
    client.set("dd.users", "alice")
    client.set("dd.users", "bob")
    client.set("dd.users", "alice")
    client.flush()
    client.close_socket()
    series = flushed(daemon)

    app = ("app", "shop")
    assert series[("dd.hits", "counter", (app, ("env", "prod")))]["count"] == 2
    assert series[("dd.temp", "gauge", (app,))]["value"] == -5
    assert series[("dd.level", "gauge", (app,))]["value"] == -2.5
    assert distribution(series[("dd.size", "histogram", (app,))]) == {
        "count": 2, "sum": 40, "min": 10, "max": 30}
    assert distribution(series[("dd.latency", "histogram", (app,))]) == {
        "count": 1, "sum": 7, "min": 7, "max": 7}
    assert distribution(series[("dd.query", "timer", (app,))]) == {
        "count": 2, "sum": 16, "min": 4, "max": 12}
    assert series[("dd.users", "set", (app,))]["count"] == 2


def test_aiodogstatsd_client(start_daemon: Any) -> None:
    import aiodogstatsd

    daemon, _, port = start(start_daemon)

    async def send() -> None:
        async with aiodogstatsd.Client(host="127.0.0.1", port=port,
                                       constant_tags={"app": "shop"}) as client:
            client.increment("aio.hits", value=5, tags={"env": "prod"})
            client.decrement("aio.hits", value=2, tags={"env": "prod"})
            client.gauge("aio.temp", value=3)
            client.gauge("aio.temp", value=-5)
            client.histogram("aio.size", value=10)
            client.histogram("aio.size", value=20)
            client.distribution("aio.latency", value=8)
            client.timing("aio.query", value=15)

    asyncio.run(send())
    series = flushed(daemon)

    app = ("app", "shop")
    assert series[("aio.hits", "counter", (app, ("env", "prod")))]["count"] == 3
    assert series[("aio.temp", "gauge", (app,))]["value"] == -5
    assert distribution(series[("aio.size", "histogram", (app,))]) == {
        "count": 2, "sum": 30, "min": 10, "max": 20}
    assert distribution(series[("aio.latency", "histogram", (app,))]) == {
        "count": 1, "sum": 8, "min": 8, "max": 8}
    assert distribution(series[("aio.query", "timer", (app,))]) == {
        "count": 1, "sum": 15, "min": 15, "max": 15}


def test_jsocol_statsd_client(start_daemon: Any) -> None:
    import statsd

    daemon, port, _ = start(start_daemon)
    client = statsd.StatsClient("127.0.0.1", port, prefix="js")
    client.incr("hits", 4)
    client.decr("hits")
    client.gauge("temp", 3)
    client.gauge("temp", -5)  # the client sends 0|g then -5|g: Etsy's way to set -5
    client.gauge("level", 10)
    client.gauge("level", 4, delta=True)
    client.gauge("level", -1, delta=True)
    client.timing("query", 12)
    client.timing("query", 20)
    client.set("users", "alice")
    client.set("users", "bob")
    client.close()
    series = flushed(daemon)

    assert series[("js.hits", "counter", ())]["count"] == 3
    assert series[("js.temp", "gauge", ())]["value"] == -5
    assert series[("js.level", "gauge", ())]["value"] == 13
    assert distribution(series[("js.query", "timer", ())]) == {
        "count": 2, "sum": 32, "min": 12, "max": 20}
    assert series[("js.users", "set", ())]["count"] == 2


def test_hot_shots_client(start_daemon: Any, run_node: Any) -> None:
    daemon, _, port = start(start_daemon)
    run_node(f"""
const StatsD = require('hot-shots');
const c = new StatsD({{host: '127.0.0.1', port: {port}, globalTags: {{app: 'shop'}},
                      errorHandler: (e) => {{ console.error(e); process.exit(1); }}}});
c.increment('hs.hits', 3, {{env: 'prod'}});
c.decrement('hs.hits', 1, {{env: 'prod'}});
c.gauge('hs.temp', 3);
c.gauge('hs.temp', -5);
c.histogram('hs.size', 10);
c.histogram('hs.size', 30);
c.distribution('hs.latency', 9);
c.timing('hs.query', 11);
c.set('hs.users', 'alice');
c.set('hs.users', 'bob');
c.close((err) => process.exit(err ? 1 : 0));
""")
    series = flushed(daemon)

    app = ("app", "shop")
    assert series[("hs.hits", "counter", (app, ("env", "prod")))]["count"] == 2
    assert series[("hs.temp", "gauge", (app,))]["value"] == -5
    assert distribution(series[("hs.size", "histogram", (app,))]) == {
        "count": 2, "sum": 40, "min": 10, "max": 30}
    assert distribution(series[("hs.latency", "histogram", (app,))]) == {
        "count": 1, "sum": 9, "min": 9, "max": 9}
    assert distribution(series[("hs.query", "timer", (app,))]) == {
        "count": 1, "sum": 11, "min": 11, "max": 11}
    assert series[("hs.users", "set", (app,))]["count"] == 2


def test_node_statsd_client(start_daemon: Any, run_node: Any) -> None:
    daemon, port, _ = start(start_daemon)
    run_node(f"""
const StatsD = require('node-statsd');
const c = new StatsD({{host: '127.0.0.1', port: {port}, prefix: 'ns.'}});
c.increment('hits', 4);
c.decrement('hits', 1);
c.gauge('temp', 3);
c.gauge('temp', -5);  // Etsy meaning on this listener: a change, 3 - 5
c.timing('query', 12);
c.histogram('size', 5);
c.set('users', 'alice');
c.unique('users', 'bob');
setTimeout(() => c.close(), 200);
""")
    series = flushed(daemon)

    assert series[("ns.hits", "counter", ())]["count"] == 3
    assert series[("ns.temp", "gauge", ())]["value"] == -2
    assert distribution(series[("ns.query", "timer", ())]) == {
        "count": 1, "sum": 12, "min": 12, "max": 12}
    assert distribution(series[("ns.size", "histogram", ())]) == {
        "count": 1, "sum": 5, "min": 5, "max": 5}
    assert series[("ns.users", "set", ())]["count"] == 2


def test_statsd_ruby_client(start_daemon: Any) -> None:
    """``statsd-ruby`` (Debian's ``ruby-statsd``), when installed: .ci/run installs it."""
    ruby = shutil.which("ruby")
    if ruby is None or subprocess.run([ruby, "-e", "require 'statsd'"],
                                      capture_output=True).returncode != 0:
        pytest.skip("ruby with the statsd-ruby library (Debian ruby-statsd) not installed")
    daemon, port, _ = start(start_daemon)
    script = f"""
require 'statsd'
s = Statsd.new('127.0.0.1', {port})
s.namespace = 'rb'
s.increment 'hits'
s.count 'hits', 4
s.decrement 'hits'
s.gauge 'temp', 3
s.gauge 'temp', 7
s.timing 'query', 12
s.timing 'query', 20
s.set 'users', 'alice'
s.set 'users', 'bob'
"""
    result = subprocess.run([ruby, "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    series = flushed(daemon)

    assert series[("rb.hits", "counter", ())]["count"] == 4
    assert series[("rb.temp", "gauge", ())]["value"] == 7
    assert distribution(series[("rb.query", "timer", ())]) == {
        "count": 2, "sum": 32, "min": 12, "max": 20}
    assert series[("rb.users", "set", ())]["count"] == 2
