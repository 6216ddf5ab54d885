"""What a graphite datapoint means, per listener: relayed raw, aggregated, or both.

A ``format: graphite`` or ``graphite_pickle`` listener says with ``graphite_datapoints`` what
becomes of its datapoints: ``relay`` hands them, timestamps kept, to the relays that take
graphite lines (``carbon_routes``), ``aggregate`` aggregates them. Absent, it is what the mode
does: both in ``mode: aggregate``, relay in ``mode: relay`` (where aggregating is refused).

An aggregated datapoint is a gauge unless a rule says otherwise. Rules are ordered lists under
the top-level ``graphite_rules``, one list per name, and a listener names the list it uses
(``graphite_rules: <name>``): named lists, so the TCP, UDP and pickle listeners of one carbon
endpoint share one, and top level, so a reload changes them (listeners change only on
restart). A rule matches a path with carbon-relay-ng's matcher (the ``carbon_routes`` one:
prefix, sub, regex and their negations, every one set must hold) and says the statsd type
(``gauge``, ``counter``: the value added, ``timer`` / ``histogram``: one sample, ``set``: the
value's text is a member), optionally a new name (a Go template over the regex's groups, as
carbon-relay-ng's rewriters write it), or ``drop: true``. The first rule that matches decides;
no match is the default gauge. The ``mapping_file`` and ``graphite_templates`` rules then apply
as to every sample. A datapoint's client timestamp is kept: in the current interval it counts
there, outside it is handled as statsd's ``|T`` (``late_samples``, ``timestamp_window_seconds``).

Counted per listener under its prefix: ``datapoints.relayed``, ``datapoints.aggregated`` (taken
by the aggregation), ``datapoints.refused_by_rule`` (a ``drop`` rule, or a new name that came
out empty)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from forwarders.carbon_routes.matching import MATCHER_KEYS, Matcher, go_template
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, Sample

__all__ = ["DATAPOINT_USES", "GRAPHITE_FORMATS", "GraphiteRuleError", "GraphiteRules",
           "GraphiteSource", "graphite_config_errors", "graphite_source", "load_graphite_rules"]

GRAPHITE_FORMATS = ("graphite", "graphite_pickle")
DATAPOINT_USES = ("relay", "aggregate")
RULE_TYPES = {"gauge": GAUGE, "counter": COUNTER, "timer": TIMER, "histogram": HISTOGRAM,
              "set": SET}
CACHED_PATHS = 100_000
"""Path answers one rule list remembers; past this many the memory is emptied and refills."""
_DROP = ("", "drop")
"""The answer for a path a rule drops (compared by identity)."""
_GROUP_REFERENCE = re.compile(r"\\g<(\w+)>")


class GraphiteRuleError(ValueError):
    """A rule that cannot be used; the message names its key."""


@dataclass(frozen=True)
class GraphiteSource:
    """One graphite listener as the pipeline sees it (bound into the listener's deliver
    call, and pickled with the payload across a hot restart)."""

    prefix: str
    """The listener's self-metric prefix, ``listener.tcp.127_0_0_1_2003``."""
    uses: tuple[str, ...] | None
    """``graphite_datapoints``; None: what the mode does."""
    rules: str | None
    """The name of its list under the top-level ``graphite_rules``."""


def graphite_source(spec: dict[str, Any], prefix: str) -> GraphiteSource | None:
    """The source of a graphite listener's payloads; None for the other formats."""
    if spec.get("format", "statsd") not in GRAPHITE_FORMATS:
        return None
    uses = spec.get("graphite_datapoints")
    return GraphiteSource(prefix, tuple(uses) if uses is not None else None,
                          spec.get("graphite_rules"))


@dataclass(frozen=True)
class _Rule:
    matcher: Matcher
    type: str
    drop: bool
    regex: re.Pattern[str] | None
    template: str | None
    """The new name as a ``Match.expand`` template (from the Go one), or None: the path."""


class GraphiteRules:
    """One ordered rule list, compiled; decides once per path and remembers."""

    def __init__(self, rules: list[_Rule]) -> None:
        self._rules = rules
        self._answers: dict[str, tuple[str, str]] = {}

    def apply(self, sample: Sample) -> Sample | None:
        """``sample`` (a gauge datapoint) as the first matching rule makes it; None if the
        rule drops it or its new name came out empty."""
        answer = self._answers.get(sample.name)
        if answer is None:
            if len(self._answers) >= CACHED_PATHS:
                self._answers.clear()
            answer = self._answers[sample.name] = self._decide(sample.name)
        if answer is _DROP:
            return None
        name, kind = answer
        if kind == GAUGE and name == sample.name:
            return sample
        value = sample.value
        if kind == SET:
            assert isinstance(value, float)
            value = str(int(value)) if value.is_integer() else repr(value)
        # built whole: NamedTuple._replace costs three times as much, once per datapoint
        return Sample(name, kind, value, sample.rate, sample.tags, False, sample.timestamp)

    def _decide(self, path: str) -> tuple[str, str]:
        for rule in self._rules:
            if not rule.matcher.matches(path):
                continue
            if rule.drop:
                return _DROP
            name = path
            if rule.template is not None:
                found = rule.regex.search(path) if rule.regex is not None else None
                name = found.expand(rule.template) if found is not None else rule.template
                if not name or any(c.isspace() for c in name):
                    return _DROP  # empty, or whitespace from a group: graphite syntax
            return name, rule.type
        return path, GAUGE


def load_graphite_rules(config: dict[str, Any]) -> dict[str, GraphiteRules]:
    """Every list of ``graphite_rules`` compiled; raise :class:`GraphiteRuleError` naming the
    rule's key."""
    return {name: GraphiteRules([_rule(rule, f"graphite_rules.{name}[{index}]")
                                 for index, rule in enumerate(rules)])
            for name, rules in (config.get("graphite_rules") or {}).items()}


def _rule(options: dict[str, Any], where: str) -> _Rule:
    for key in ("regex", "not_regex"):
        if options.get(key):
            try:
                re.compile(options[key])
            except re.error as exc:
                raise GraphiteRuleError(f"{where}.{key}: {options[key]!r}: {exc}") from None
    matcher = Matcher({key: options[key] for key in MATCHER_KEYS if key in options})
    drop = bool(options.get("drop", False))
    if drop and ("type" in options or "name" in options):
        raise GraphiteRuleError(f"{where}.drop: a dropping rule has no `type` or `name`")
    template = None
    if "name" in options:
        text = options["name"]
        template = go_template(text) if matcher.regex is not None else text
        groups = matcher.regex.groups if matcher.regex is not None else 0
        known = matcher.regex.groupindex if matcher.regex is not None else {}
        for reference in _GROUP_REFERENCE.findall(go_template(text)):
            if not (reference.isdigit() and int(reference) <= groups) and reference not in known:
                raise GraphiteRuleError(f"{where}.name: {text!r} refers to group "
                                        f"{reference!r}, which `regex` does not have")
    return _Rule(matcher, RULE_TYPES[options.get("type", "gauge")], drop, matcher.regex,
                 template)


def graphite_config_errors(config: dict[str, Any], listeners: list[dict[str, Any]]) -> list[str]:
    """One line per listener asking for what cannot be: its keys on a non-graphite listener,
    aggregation in ``mode: relay``, a rule list that does not exist or would not be used; and
    the rules that do not compile."""
    try:
        known = load_graphite_rules(config)
    except GraphiteRuleError as exc:
        return [str(exc)]
    errors = []
    for index, spec in enumerate(listeners):
        where = f"listeners[{index}]"
        fmt = spec.get("format", "statsd")
        given = [key for key in ("graphite_datapoints", "graphite_rules") if key in spec]
        if given and fmt not in GRAPHITE_FORMATS:
            errors.append(f"{where}.{given[0]}: only for format graphite or graphite_pickle "
                          f"(this listener's format is {fmt})")
            continue
        uses = spec.get("graphite_datapoints")
        if uses is not None and "aggregate" in uses and config.get("mode") == "relay":
            errors.append(f"{where}.graphite_datapoints: aggregate is impossible in mode: "
                          "relay, which aggregates nothing")
        rules = spec.get("graphite_rules")
        if rules is None:
            continue
        if rules not in known:
            errors.append(f"{where}.graphite_rules: no list {rules!r} under the top-level "
                          f"graphite_rules (known: {', '.join(sorted(known)) or 'none'})")
        elif (config.get("mode") == "relay" if uses is None else "aggregate" not in uses):
            errors.append(f"{where}.graphite_rules: rules apply to aggregated datapoints, and "
                          "this listener aggregates none (graphite_datapoints, mode)")
    return errors
