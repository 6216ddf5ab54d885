"""Loading and validating pystatsd.conf against the JSON Schema shipped in the package.

The schema (``schema.yaml``) is the one place an option is declared: its defaults are filled in
here after validation, and the sample config and reference docs are generated from it."""

from __future__ import annotations

import copy
import functools
import importlib.resources
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from forwarders import ForwarderClash, UnknownForwarder, fill_defaults, load_forwarder_class

Config = dict[str, Any]


class ConfigError(Exception):
    """The config cannot be used; ``errors`` holds one line per problem, each naming its key."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


@functools.cache
def main_schema() -> dict[str, Any]:
    """The daemon's own schema (forwarder sections are checked by their forwarders' schemas)."""
    text = importlib.resources.files("pystatsd").joinpath("schema.yaml").read_text("utf-8")
    schema: dict[str, Any] = yaml.safe_load(text)
    return schema


def forwarder_schema(forwarder_type: str) -> dict[str, Any]:
    """The full schema of one forwarder section: the forwarder's own keys plus the common ones."""
    return load_forwarder_class(forwarder_type).section_schema()


def load_config(path: str | Path) -> Config:
    """Given a config file path, return the validated config with every default filled in.

    Raises :class:`ConfigError` with every problem found, each naming its key path."""
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}: " if where is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(source, [f"{line}not valid YAML: {problem}"]) from exc
    return build_config(raw if raw is not None else {}, source)


def build_config(raw: Any, source: str = "<config>") -> Config:
    """Validate a parsed config document and fill defaults; raise :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys to values"])
    errors = _schema_errors(main_schema(), raw, ())
    config = copy.deepcopy(raw)
    if not errors:
        fill_defaults(main_schema(), config)
        for name, section in config["forwarders"].items():
            errors += _forwarder_errors(name, section)
    if errors:
        raise ConfigError(source, errors)
    return config


def listeners(config: Config) -> list[dict[str, Any]]:
    """The sockets to open: the configured ``listeners`` with address and port filled from
    ``bind_address``/``bind_port``, or one UDP and one TCP listener on those."""
    configured = config.get("listeners")
    if configured is None:
        configured = [{"protocol": "udp"}, {"protocol": "tcp"}]
    item_schema = main_schema()["properties"]["listeners"]["items"]
    result = []
    for entry in configured:
        listener = {"address": config["bind_address"], "port": config["bind_port"], **entry}
        fill_defaults(item_schema, listener)
        result.append(listener)
    return result


def _forwarder_errors(name: str, section: dict[str, Any]) -> list[str]:
    where = ("forwarders", name)
    forwarder_type = section.get("type", name)
    if not isinstance(forwarder_type, str):
        return [f"{_dotted((*where, 'type'))}: must be a string"]
    try:
        schema = forwarder_schema(forwarder_type)
    except (UnknownForwarder, ForwarderClash, TypeError) as exc:
        return [f"{_dotted((*where, 'type'))}: {exc}"]
    except ImportError as exc:
        return [f"{_dotted(where)}: forwarder {forwarder_type!r} cannot be loaded: {exc}"]
    errors = _schema_errors(schema, section, where)
    if not errors:
        fill_defaults(schema, section)
    return errors


def _schema_errors(schema: dict[str, Any], instance: Any, prefix: tuple[Any, ...]) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return sorted(line for error in validator.iter_errors(instance)
                  for line in _describe(error, prefix))


def _describe(error: jsonschema.ValidationError, prefix: tuple[Any, ...]) -> Iterable[str]:
    path = (*prefix, *error.path)
    if error.validator == "required":
        missing = set(error.validator_value) - set(error.instance)
        return [f"{_dotted((*path, key))}: required" for key in sorted(missing)]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        known = ", ".join(sorted(allowed))
        return [f"{_dotted((*path, key))}: unknown key (known: {known})" for key in unknown]
    if error.validator == "enum":
        choices = ", ".join(map(str, error.validator_value))
        return [f"{_dotted(path)}: {error.instance!r} is not one of: {choices}"]
    return [f"{_dotted(path)}: {error.message}"]


def _dotted(path: Iterable[Any]) -> str:
    text = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
    return text or "(top level)"
