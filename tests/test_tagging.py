"""Agent tags: merged into every sample, sorted, with the configured precedence."""

from __future__ import annotations

import pytest

from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from pystatsd.tagging import Tagger


def test_agent_wins_a_shared_key_by_default_precedence() -> None:
    tagger = Tagger({"env": "prod", "dc": "eu1"}, "agent")
    assert tagger.apply((("env", "dev"), ("user", "x"))) == (
        ("dc", "eu1"), ("env", "prod"), ("user", "x"))


def test_client_precedence_keeps_the_metric_value() -> None:
    tagger = Tagger({"env": "prod", "dc": "eu1"}, "client")
    assert tagger.apply((("env", "dev"), ("user", "x"))) == (
        ("dc", "eu1"), ("env", "dev"), ("user", "x"))


def test_agent_tags_are_added_to_untagged_samples_and_values_become_strings() -> None:
    tagger = Tagger({"zone": 3, "canary": True, "ratio": 0.5}, "agent")
    assert tagger.apply(()) == (("canary", "true"), ("ratio", "0.5"), ("zone", "3"))
    assert tagger.apply((("a", "1"),)) == (
        ("a", "1"), ("canary", "true"), ("ratio", "0.5"), ("zone", "3"))


def test_no_agent_tags_leaves_tags_alone() -> None:
    tags = (("b", "2"), ("a", "1"))
    assert Tagger({}, "agent").apply(tags) is tags


def test_unknown_precedence_is_refused() -> None:
    with pytest.raises(ValueError, match="precedence"):
        Tagger({}, "server")


def series_tags(config: dict, payloads: list[bytes]) -> list[tuple]:
    built = build_config({"forwarders": {}, **config})
    manager = MetricMgr(built)
    pipeline = Pipeline(built, manager, SelfStats())
    for payload in payloads:
        pipeline.ingest(payload)
    return [s.tags for s in manager.finish(manager.swap(), 10)]


def test_pipeline_applies_agent_tags_to_every_format_with_precedence() -> None:
    payloads = [b"a:1|c|#env:dev", b"a:1|c|#env:dev", b'{"metric_name":"b","metric_type":'
                b'"counter","value":1,"env":"dev"}', b"c,env=dev:1|ms"]
    assert series_tags({"agent": {"tags": {"env": "prod"}}}, payloads) == [
        (("env", "prod"),)] * 3
    assert series_tags({"agent": {"tags": {"env": "prod"}}, "tag_precedence": "client"},
                       payloads) == [(("env", "dev"),)] * 3


def test_reconfigure_applies_new_agent_tags_to_lines_already_cached() -> None:
    config = build_config({"forwarders": {}, "agent": {"tags": {"env": "prod"}}})
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, SelfStats())
    pipeline.ingest(b"a:1|c")
    pipeline.ingest(b"a:1|c")  # now served from the line cache
    pipeline.reconfigure(build_config({"forwarders": {}, "agent": {"tags": {"env": "qa"}}}))
    pipeline.ingest(b"a:1|c")
    series = manager.finish(manager.swap(), 10)
    assert [(s.tags, s.stats["count"]) for s in series] == [
        ((("env", "prod"),), 2.0), ((("env", "qa"),), 1.0)]
