"""Name -> tag mapping: the examples of statsd_exporter's documentation (glob, regex,
``$n``/``${n}``, ``action: drop``, ``match_metric_type``, ordering) give the names and labels it
documents, through the pipeline (fast path included) and the real daemon; Graphite templates
give Telegraf's documented results; a bad rule stops the config with its key named."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pystatsd.aggregation import MetricMgr
from pystatsd.config import ConfigError, build_config
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from tests.clients.conftest import by_series

DOCUMENTED = {"mappings": [
    {"match": "test.dispatcher.*.*.*", "name": "dispatcher_events_total",
     "labels": {"processor": "$1", "action": "$2", "outcome": "$3", "job": "test_dispatcher"}},
    {"match": "*.signup.*.*", "name": "signup_events_total",
     "labels": {"provider": "$2", "outcome": "$3", "job": "${1}_server"}},
    {"match": "test.*.*.counter", "name": "${2}_total", "labels": {"provider": "$1"}},
    {"match": r"(.*)\.(.*)--(.*)\.status\.(.*)\.count", "match_type": "regex",
     "name": "request_total",
     "labels": {"hostname": "$1", "exec": "$2", "protocol": "$3", "code": "$4"}},
    {"match": "test.foo.*", "name": "test_foo", "match_metric_type": "counter",
     "labels": {"provider": "$1"}},
    {"match": "junk.*", "action": "drop", "name": "dropped"},
]}


def mapped(tmp_path: Path, rules: dict[str, Any] | None, payloads: list[bytes],
           templates: list[str] | None = None) -> tuple[dict[tuple[str, Any], dict], dict]:
    config: dict[str, Any] = {"forwarders": {}}
    if rules is not None:
        path = tmp_path / "mapping.yml"
        path.write_text(yaml.safe_dump(rules))
        config["mapping_file"] = str(path)
    if templates is not None:
        config["graphite_templates"] = templates
    built = build_config(config)
    stats = SelfStats()
    manager = MetricMgr(built, stats)
    pipeline = Pipeline(built, manager, stats)
    for payload in payloads:
        pipeline.ingest(payload)
    pipeline.publish_counts()
    return ({(s.name, s.tags): s.stats for s in manager.finish(manager.swap(), 10.0)},
            dict(stats.take()))


def test_statsd_exporters_documented_examples(tmp_path: Path) -> None:
    lines = [b"test.dispatcher.FooProcessor.send.success:1|c",
             b"foo_product.signup.facebook.failure:1|c",
             b"test.web-server.foo.bar:1|c",
             b"test.aws.widgets.counter:1|c",
             b"web1.api--http.status.404.count:1|c",
             b"test.foo.github:1|c", b"test.foo.github:5|g",
             b"junk.anything:1|c", b"junk.anything:1|ms"]
    got, counts = mapped(tmp_path, DOCUMENTED, lines * 3)  # repeated: the fast path replays
    assert got == {
        ("dispatcher_events_total", (("action", "send"), ("job", "test_dispatcher"),
                                     ("outcome", "success"), ("processor", "FooProcessor"))):
            {"count": 3.0, "rate": 0.3},
        ("signup_events_total", (("job", "foo_product_server"), ("outcome", "failure"),
                                 ("provider", "facebook"))): {"count": 3.0, "rate": 0.3},
        # no rule: the name stays (statsd_exporter would then escape it for Prometheus)
        ("test.web-server.foo.bar", ()): {"count": 3.0, "rate": 0.3},
        ("widgets_total", (("provider", "aws"),)): {"count": 3.0, "rate": 0.3},
        ("request_total", (("code", "404"), ("exec", "api"), ("hostname", "web1"),
                           ("protocol", "http"))): {"count": 3.0, "rate": 0.3},
        ("test_foo", (("provider", "github"),)): {"count": 3.0, "rate": 0.3},
        ("test.foo.github", ()): {"value": 5.0},  # a gauge: the counter-only rule skips it
    }
    assert counts["mapping.dropped"] == 6


def test_ordering_globs_in_file_order_then_regexes_and_the_catch_all_drop(
        tmp_path: Path) -> None:
    rules = {"mappings": [
        {"match": "a.*.c", "name": "first"},
        {"match": "a.b.c", "name": "second"},  # shadowed: the earlier glob wins
        {"match": r"^a\.b", "match_type": "regex", "name": "regex_$0"},
        {"match": "timing.*.*", "name": "my_timer", "labels": {"job": "${1}_server"}},
        {"match": ".", "match_type": "regex", "action": "drop", "name": "dropped"},
    ]}
    lines = [b"a.b.c:1|c", b"a.bx:1|c", b"timing.web.x:5|ms", b"other:1|c"]
    got, counts = mapped(tmp_path, rules, lines)
    assert set(got) == {("first", ()), ("regex_", ()), ("my_timer", (("job", "web_server"),))}
    assert counts["mapping.dropped"] == 1
    unordered = {"defaults": {"glob_disable_ordering": True}, "mappings": rules["mappings"]}
    got, _ = mapped(tmp_path, unordered, [b"a.b.c:1|c"])
    assert set(got) == {("second", ())}  # without ordering, the literal component wins


def test_mapping_labels_replace_client_tags_of_the_same_key(tmp_path: Path) -> None:
    rules = {"mappings": [{"match": "api.*", "name": "api", "labels": {"route": "$1"}}]}
    got, _ = mapped(tmp_path, rules, [b"api.login:1|c|#route:x,env:prod"])
    assert set(got) == {("api", (("env", "prod"), ("route", "login")))}


def test_graphite_templates_give_telegrafs_documented_results(tmp_path: Path) -> None:
    got, _ = mapped(tmp_path, None, [
        b"us.west.cpu.load:100|g", b"cpu.load.us-west:100|g", b"servers.localhost.cpu.idle:3|g",
        b"stats.web01.mem.free:7|g", b"unmatched:1|g"],
        templates=["us.* region.region.measurement*",
                   "cpu.* measurement.measurement.region",
                   "servers.* .host.measurement.field",
                   "stats.* .host.measurement* dc=eu,agent=sensu"])
    assert got == {
        ("cpu.load", (("region", "us.west"),)): {"value": 100.0},
        ("cpu.load", (("region", "us-west"),)): {"value": 100.0},
        ("cpu.idle", (("host", "localhost"),)): {"value": 3.0},
        ("mem.free", (("agent", "sensu"), ("dc", "eu"), ("host", "web01"))): {"value": 7.0},
        ("unmatched", ()): {"value": 1.0},
    }


@pytest.mark.parametrize(("rules", "message"), [
    ({"mappings": [{"match": "(", "match_type": "regex", "name": "x"}]}, "mappings[0]: match"),
    ({"mappings": [{"match": "a.*"}]}, "mappings[0]: needs a `name`"),
    ({"mappings": [{"match": "a", "name": "b", "match_metric_type": "set"}]},
     "match_metric_type 'set'"),
])
def test_a_bad_rule_stops_the_config_naming_it(tmp_path: Path, rules: dict,
                                               message: str) -> None:
    path = tmp_path / "mapping.yml"
    path.write_text(yaml.safe_dump(rules))
    with pytest.raises(ConfigError, match=r"mapping_file: .*" + message.replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(")):
        build_config({"forwarders": {}, "mapping_file": str(path)})


@pytest.mark.integration
def test_the_daemon_maps_names_to_tags(start_daemon: Any, tmp_path: Path) -> None:
    path = tmp_path / "mapping.yml"
    path.write_text(yaml.safe_dump(DOCUMENTED))
    daemon = start_daemon({"flush_interval": 3600, "mapping_file": str(path)})
    daemon.send_udp(b"foo_product.signup.facebook.failure:2|c",
                    b"foo_product.signup.facebook.failure:3|c", b"junk.x:1|c")
    time.sleep(0.3)
    assert daemon.stop() == 0
    series = by_series(daemon.records())
    assert series == {("signup_events_total", "counter", (
        ("job", "foo_product_server"), ("outcome", "failure"), ("provider", "facebook"))):
        series[("signup_events_total", "counter", (
            ("job", "foo_product_server"), ("outcome", "failure"), ("provider", "facebook")))]}
    assert next(iter(series.values()))["count"] == 5
