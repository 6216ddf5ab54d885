"""Metric names -> names and tags, before aggregation: statsd_exporter's mapping file format
and Graphite-style templates (as Telegraf writes them). The rules, and how they are ordered,
are in docs/mapping.md.

A :class:`NameMapper` decides once per (name, type) and remembers the answer, so a name costs
one dict lookup after its first sample; the line cache of the fast path then holds the mapped
series itself, since it remembers what the slow path made of a line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, TIMER, Sample, Tags

DROP = "drop"
CACHED_NAMES = 100_000
"""(name, type) answers remembered; past this many the memory is emptied and refills."""

_TYPE_CLASSES = {"counter": {COUNTER}, "gauge": {GAUGE},
                 "timer": {TIMER, HISTOGRAM}, "observer": {TIMER, HISTOGRAM}}
"""statsd_exporter's ``match_metric_type`` values and the sample types each matches (a timer
there is any of ms, h and d)."""
_REFERENCE = re.compile(r"\$\{(\d+)\}|\$(\d+)")


class MappingError(ValueError):
    """A mapping file or template that cannot be used; the message names the rule."""


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    name: str
    labels: dict[str, str]
    types: set[str] | None
    drop: bool
    literal_parts: int = 0  # for glob_disable_ordering: more literal components win
    anchored: bool = True
    """A glob matches the whole name; a regex anywhere in it, as Go's MatchString (so
    statsd_exporter's catch-all ``match: .`` matches every name)."""


@dataclass
class _Template:
    filter: re.Pattern[str] | None
    parts: list[str]
    tags: Tags
    literal_parts: int


@dataclass
class NameMapper:
    """The compiled rules of ``mapping_file`` and ``graphite_templates``."""

    globs: list[_Rule] = field(default_factory=list)
    regexes: list[_Rule] = field(default_factory=list)
    templates: list[_Template] = field(default_factory=list)
    glob_disable_ordering: bool = False
    _answers: dict[tuple[str, str], Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.globs or self.regexes or self.templates)

    def apply(self, sample: Sample) -> Sample | None:
        """``sample`` with its mapped name and tags (the rule's labels replacing client tags of
        the same key), unchanged if no rule matches, None if a rule drops it."""
        key = (sample.name, sample.type)
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= CACHED_NAMES:
                self._answers.clear()
            answer = self._answers[key] = self._decide(sample.name, sample.type)
        if answer is DROP:
            return None
        if answer is False:
            return sample
        name, labels = answer
        if not labels:
            return sample._replace(name=name)
        merged = dict(sample.tags)
        merged.update(labels)
        return sample._replace(name=name, tags=tuple(sorted(merged.items())))

    def _decide(self, name: str, kind: str) -> Any:
        """(new name, labels), DROP, or False for no match: globs first (file order, or the
        most literal with ``glob_disable_ordering``), then regexes in file order, as
        statsd_exporter; then the Graphite templates (the most specific filter)."""
        globs = self.globs
        if self.glob_disable_ordering:
            globs = sorted(globs, key=lambda rule: -rule.literal_parts)
        for rule in [*globs, *self.regexes]:
            if rule.types is not None and kind not in rule.types:
                continue
            found = (rule.pattern.fullmatch(name) if rule.anchored
                     else rule.pattern.search(name))
            if found is None:
                continue
            if rule.drop:
                return DROP
            groups = found.groups()
            return (_expand(rule.name, groups),
                    tuple((key, _expand(value, groups)) for key, value in rule.labels.items()))
        for template in self.templates:
            if template.filter is None or template.filter.fullmatch(name):
                return _apply_template(template, name)
        return False


def _expand(text: str, groups: tuple[str | Any, ...]) -> str:
    def one(found: re.Match[str]) -> str:
        index = int(found.group(1) or found.group(2))
        return (groups[index - 1] or "") if 0 < index <= len(groups) else ""
    return _REFERENCE.sub(one, text)


def glob_pattern(text: str) -> re.Pattern[str]:
    """A statsd_exporter glob (``*`` any run of characters but ``.``) as a regex."""
    return _glob(text)


def _glob(text: str) -> re.Pattern[str]:
    """A statsd_exporter glob: ``*`` is any run of characters but ``.``, the rest literal."""
    return re.compile("".join("([^.]*)" if part == "*" else re.escape(part)
                              for part in re.split(r"(\*)", text)))


def _apply_template(template: _Template, name: str) -> tuple[str, Tags]:
    """Telegraf's rules: each part names what the dotted component at its place is
    (``measurement``, ``field``, a tag key, or empty to skip); a part ending ``*`` takes the
    rest of the components; repeated names join with ``.``. The name is the measurement, then
    the field."""
    components = name.split(".")
    measurement: list[str] = []
    fields: list[str] = []
    tags: dict[str, list[str]] = {}
    for index, part in enumerate(template.parts):
        if index >= len(components):
            break
        greedy = part.endswith("*")
        role = part[:-1] if greedy else part
        taken = components[index:] if greedy else [components[index]]
        if role == "measurement":
            measurement += taken
        elif role == "field":
            fields += taken
        elif role:
            tags.setdefault(role, []).extend(taken)
        if greedy:
            break
    mapped = ".".join(measurement or components)
    if fields:
        mapped += "." + ".".join(fields)
    labels = dict(template.tags)
    labels.update({key: ".".join(values) for key, values in tags.items()})
    return mapped, tuple(sorted(labels.items()))


def load_mapper(config: dict[str, Any]) -> NameMapper:
    """The mapper of ``mapping_file`` and ``graphite_templates``; raise :class:`MappingError`
    naming the key and the rule."""
    mapper = NameMapper()
    path = config.get("mapping_file")
    if path:
        try:
            document = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise MappingError(f"mapping_file: cannot read {path}: {exc}") from None
        _load_rules(mapper, document if document is not None else {}, path)
    for index, line in enumerate(config.get("graphite_templates") or []):
        mapper.templates.append(_template(line, f"graphite_templates[{index}]"))
    # The most specific filter first (Telegraf), then their order.
    mapper.templates.sort(key=lambda template: (template.filter is None,
                                                -template.literal_parts))
    return mapper


def _load_rules(mapper: NameMapper, document: Any, path: str) -> None:
    if not isinstance(document, dict):
        raise MappingError(f"mapping_file: {path}: must be a mapping with `mappings:`")
    defaults = document.get("defaults") or {}
    default_match_type = defaults.get("match_type", "glob")
    mapper.glob_disable_ordering = bool(defaults.get("glob_disable_ordering", False))
    for index, rule in enumerate(document.get("mappings") or []):
        where = f"mapping_file: {path}: mappings[{index}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("match"), str):
            raise MappingError(f"{where}: needs a `match` string")
        action = rule.get("action", "map")
        if action not in ("map", "drop"):
            raise MappingError(f"{where}: action {action!r} (map or drop)")
        if action == "map" and not isinstance(rule.get("name"), str):
            raise MappingError(f"{where}: needs a `name`")
        labels = rule.get("labels") or {}
        if not isinstance(labels, dict):
            raise MappingError(f"{where}: `labels` must be a mapping")
        metric_type = rule.get("match_metric_type")
        if metric_type is not None and metric_type not in _TYPE_CLASSES:
            raise MappingError(f"{where}: match_metric_type {metric_type!r} "
                               f"({', '.join(_TYPE_CLASSES)})")
        match_type = rule.get("match_type", default_match_type)
        try:
            pattern = _glob(rule["match"]) if match_type == "glob" else re.compile(rule["match"])
        except re.error as exc:
            raise MappingError(f"{where}: match {rule['match']!r}: {exc}") from None
        if match_type not in ("glob", "regex"):
            raise MappingError(f"{where}: match_type {match_type!r} (glob or regex)")
        compiled = _Rule(pattern, str(rule.get("name", "")),
                         {str(k): str(v) for k, v in labels.items()},
                         _TYPE_CLASSES[metric_type] if metric_type else None,
                         action == "drop",
                         sum(1 for part in rule["match"].split(".") if part != "*"),
                         anchored=match_type == "glob")
        (mapper.globs if match_type == "glob" else mapper.regexes).append(compiled)


def _template(line: Any, where: str) -> _Template:
    if not isinstance(line, str) or not line.split():
        raise MappingError(f"{where}: must be `[filter] template [tag=value,...]`")
    words = line.split()
    if len(words) > 3:
        raise MappingError(f"{where}: {line!r}: more than filter, template and tags")
    tags: dict[str, str] = {}
    if len(words) >= 2 and "=" in words[-1]:
        for pair in words.pop().split(","):
            key, _, value = pair.partition("=")
            if not key or not value:
                raise MappingError(f"{where}: {line!r}: tag {pair!r} is not key=value")
            tags[key] = value
    if len(words) == 2:
        filter_text, template_text = words
        # Telegraf: a filter matches a name with at least its components, longer ones too.
        pattern: re.Pattern[str] | None = re.compile(_glob(filter_text).pattern + r"(?:\..*)?")
        literal = sum(1 for part in filter_text.split(".") if part != "*")
    else:
        pattern, template_text, literal = None, words[0], 0
    parts = template_text.split(".")
    if any(part.endswith("*") and index != len(parts) - 1 for index, part in enumerate(parts)):
        raise MappingError(f"{where}: {line!r}: only the last part may end with '*'")
    return _Template(pattern, parts, tuple(sorted(tags.items())), literal)
