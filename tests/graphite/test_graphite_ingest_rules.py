"""graphite_rules and graphite_datapoints without a process: what a rule makes of a datapoint,
and every config a graphite listener cannot have, refused with one line naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from pystatsd.config import ConfigError, build_config, listeners
from pystatsd.graphite_ingest import GraphiteSource, graphite_source, load_graphite_rules
from pystatsd.sample import Sample

RULES = [
    {"regex": r"^app\.(?P<host>\w+)\.(\w+)\.hits$", "type": "counter", "name": "hits.$2.${host}"},
    {"prefix": "junk.", "drop": True},
    {"prefix": "lat.", "not_sub": ".raw", "type": "timer"},
    {"prefix": "lat.", "type": "histogram"},
    {"prefix": "users.", "type": "set"},
    {"regex": r"^empty\.(x*)$", "name": "$1"},
    {"sub": "keep", "name": "kept.literal"},
]


def rules() -> Any:
    config = build_config({"graphite_rules": {"app": RULES}})
    return load_graphite_rules(config)["app"]


def datapoint(name: str, value: float = 3.0) -> Sample:
    return Sample(name, "gauge", value, 1.0, (("dc", "eu"),), False, 1700000000.0)


@pytest.mark.parametrize(("path", "value", "expected"), [
    # a regex's groups by number and by name, as carbon-relay-ng's rewriters write them
    ("app.web1.api.hits", 3.0, ("hits.api.web1", "counter", 3.0)),
    ("lat.db", 2.5, ("lat.db", "timer", 2.5)),
    # first match wins: the timer rule refuses .raw, the next rule takes it
    ("lat.db.raw", 2.5, ("lat.db.raw", "histogram", 2.5)),
    # a set member is the value's text, an integral value without ".0"
    ("users.online", 42.0, ("users.online", "set", "42")),
    ("users.online", 0.5, ("users.online", "set", "0.5")),
    # a literal name (no regex): written as given, a `$` would be text
    ("a.keep.b", 1.0, ("kept.literal", "gauge", 1.0)),
    # no rule matches: the default, a gauge of the path
    ("app.web1.hits", 7.0, ("app.web1.hits", "gauge", 7.0)),
])
def test_the_first_matching_rule_decides_type_and_name(path: str, value: float,
                                                       expected: tuple[str, str, Any]) -> None:
    sample = rules().apply(datapoint(path, value))
    assert sample is not None
    assert (sample.name, sample.type, sample.value) == expected
    # the client's tags and timestamp stay: the aggregation decides on the timestamp
    assert sample.tags == (("dc", "eu"),) and sample.timestamp == 1700000000.0


def test_a_drop_rule_and_a_name_that_comes_out_empty_refuse_the_datapoint() -> None:
    compiled = rules()
    assert compiled.apply(datapoint("junk.anything")) is None
    assert compiled.apply(datapoint("empty.")) is None
    assert compiled.apply(datapoint("empty.xx")) == datapoint("empty.xx")._replace(name="xx")


def test_the_answer_for_a_path_is_remembered_and_stays_the_same() -> None:
    compiled = rules()
    first = compiled.apply(datapoint("app.h.api.hits", 1.0))
    again = compiled.apply(datapoint("app.h.api.hits", 5.0))
    assert first is not None and again is not None
    assert (again.name, again.type, again.value) == ("hits.api.h", "counter", 5.0)


def graphite(**keys: Any) -> dict[str, Any]:
    return {"protocol": "tcp", "port": 2003, "format": "graphite", **keys}


def errors_of(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        build_config(config)
    return raised.value.errors


@pytest.mark.parametrize(("config", "line"), [
    ({"mode": "relay", "listeners": [graphite(graphite_datapoints=["relay", "aggregate"])]},
     "listeners[0].graphite_datapoints: aggregate is impossible in mode: relay, which "
     "aggregates nothing"),
    ({"listeners": [{"protocol": "udp"}, {"protocol": "tcp", "format": "statsite",
                                           "graphite_datapoints": ["relay"]}]},
     "listeners[1].graphite_datapoints: only for format graphite or graphite_pickle (this "
     "listener's format is statsite)"),
    ({"listeners": [{"protocol": "udp", "graphite_rules": "app"}],
      "graphite_rules": {"app": []}},
     "listeners[0].graphite_rules: only for format graphite or graphite_pickle (this "
     "listener's format is statsd)"),
    ({"listeners": [graphite(graphite_rules="ap")], "graphite_rules": {"app": []}},
     "listeners[0].graphite_rules: no list 'ap' under the top-level graphite_rules (known: "
     "app)"),
    ({"listeners": [graphite(graphite_datapoints=["relay"], graphite_rules="app")],
      "graphite_rules": {"app": []}},
     "listeners[0].graphite_rules: rules apply to aggregated datapoints, and this listener "
     "aggregates none (graphite_datapoints, mode)"),
    ({"mode": "relay", "listeners": [graphite(graphite_rules="app")],
      "graphite_rules": {"app": []}},
     "listeners[0].graphite_rules: rules apply to aggregated datapoints, and this listener "
     "aggregates none (graphite_datapoints, mode)"),
    ({"listeners": [graphite(graphite_datapoints=[])]},
     "listeners[0].graphite_datapoints: [] should be non-empty"),
    ({"listeners": [graphite(graphite_datapoints=["relay", "relay"])]},
     "listeners[0].graphite_datapoints: ['relay', 'relay'] has non-unique elements"),
    ({"listeners": [graphite(graphite_datapoints=["store"])]},
     "listeners[0].graphite_datapoints[0]: 'store' is not one of: relay, aggregate"),
    ({"graphite_rules": {"app": [{"regex": "(", "type": "counter"}]}},
     "graphite_rules.app[0].regex: '(': missing ), unterminated subpattern at position 0"),
    ({"graphite_rules": {"app": [{"prefix": "a"}, {"not_regex": "[z"}]}},
     "graphite_rules.app[1].not_regex: '[z': unterminated character set at position 0"),
    ({"graphite_rules": {"app": [{"regex": "^a\\.(.*)$", "name": "x.$2"}]}},
     "graphite_rules.app[0].name: 'x.$2' refers to group '2', which `regex` does not have"),
    ({"graphite_rules": {"app": [{"prefix": "a", "name": "x.$1"}]}},
     "graphite_rules.app[0].name: 'x.$1' refers to group '1', which `regex` does not have"),
    ({"graphite_rules": {"app": [{"prefix": "a", "drop": True, "type": "counter"}]}},
     "graphite_rules.app[0].drop: a dropping rule has no `type` or `name`"),
    ({"graphite_rules": {"app": [{"prefix": "a", "type": "meter"}]}},
     "graphite_rules.app[0].type: 'meter' is not one of: gauge, counter, timer, histogram, set"),
    ({"graphite_rules": {"app": [{"prefx": "a"}]}},
     "graphite_rules.app[0].prefx: unknown key; did you mean 'prefix'?"),
])
def test_a_config_a_graphite_listener_cannot_have_is_refused_naming_the_key(
        config: dict[str, Any], line: str) -> None:
    assert errors_of(config) == [line]


@pytest.mark.parametrize("config", [
    {"listeners": [graphite(graphite_datapoints=["relay"])]},
    {"listeners": [graphite(graphite_datapoints=["aggregate"], graphite_rules="app"),
                   {**graphite(graphite_rules="app"), "protocol": "udp"},
                   graphite(port=2004, format="graphite_pickle", graphite_rules="app")],
     "graphite_rules": {"app": RULES}},
    {"mode": "relay", "listeners": [graphite(graphite_datapoints=["relay"])]},
])
def test_the_choices_a_graphite_listener_can_have_are_taken(config: dict[str, Any]) -> None:
    built = build_config(config)
    sources = [graphite_source(spec, f"l{index}") for index, spec in enumerate(listeners(built))]
    assert sources == [GraphiteSource(f"l{index}", tuple(spec.get("graphite_datapoints", ()))
                                      or None, spec.get("graphite_rules"))
                       for index, spec in enumerate(config["listeners"])]
