"""The DogStatsD container id ``|c:<id>``: ignored by default, kept as the tag named by
``container_id_tag`` on request (the client's own tag of that key winning), on the fast path
as on the decoder's; sent by the real ``datadog`` client's ``container_id``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from tests.clients.conftest import by_series

LINES = [b"hits:1|c|#env:prod|c:abc123", b"hits:2|c|#env:prod|c:abc123",
         b"hits:4|c|c:def456", b"temp:3|g|c:abc123|#container_id:mine"]


def flushed(config: dict[str, Any], payloads: list[bytes]) -> dict[tuple[str, Any], float]:
    built = build_config({"forwarders": {}, **config})
    stats = SelfStats()
    manager = MetricMgr(built, stats)
    pipeline = Pipeline(built, manager, stats)
    for payload in payloads:
        pipeline.ingest(payload)
    return {(s.name, s.tags): s.stats.get("count", s.stats.get("value", 0.0))
            for s in manager.finish(manager.swap(), 10.0)}


def test_container_id_is_ignored_by_default() -> None:
    assert flushed({}, LINES * 3) == {
        ("hits", (("env", "prod"),)): 9.0, ("hits", ()): 12.0,
        ("temp", (("container_id", "mine"),)): 3.0}


def test_container_id_is_a_tag_on_request_and_the_fast_path_keeps_it() -> None:
    got = flushed({"container_id_tag": "container_id"}, LINES * 3)  # repeats hit the cache
    assert got == {
        ("hits", (("container_id", "abc123"), ("env", "prod"))): 9.0,
        ("hits", (("container_id", "def456"),)): 12.0,
        ("temp", (("container_id", "mine"),)): 3.0}


@pytest.mark.integration
def test_the_datadog_clients_container_id_becomes_the_tag(start_daemon: Any) -> None:
    from datadog.dogstatsd import DogStatsd

    daemon = start_daemon({"flush_interval": 3600, "container_id_tag": "container_id"})
    client = DogStatsd(host="127.0.0.1", port=daemon.port, disable_telemetry=True,
                       container_id="0123abcd")
    client.increment("dd.hits", 2)
    client.gauge("dd.temp", 7)
    client.flush()
    client.close_socket()
    time.sleep(0.3)
    assert daemon.stop() == 0
    series = by_series(daemon.records())
    tag = (("container_id", "0123abcd"),)
    assert series[("dd.hits", "counter", tag)]["count"] == 2
    assert series[("dd.temp", "gauge", tag)]["value"] == 7
