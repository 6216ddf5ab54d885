"""Loading and validating pystatsd.conf against the JSON Schema shipped in the package.

The schema (``schema.yaml``) is the one place an option is declared: its defaults are filled in
here after validation, and the sample config and reference docs are generated from it."""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import os
import pickle
import re
import select
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from forwarders import ForwarderClash, UnknownForwarder, fill_defaults, load_forwarder_class

if TYPE_CHECKING:
    import jsonschema

Config = dict[str, Any]

CHILD_TIMEOUT = 30.0
"""Seconds a validating child (see :func:`validate_in_child`) may take before it is killed and
the config is validated in this process instead."""

_in_child = False


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

    Raises :class:`ConfigError` with every problem found, each naming its key path; its
    ``source`` is ``path``."""
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    try:
        raw, duplicates = _ConfigLoader(text).load_checked()
    except yaml.reader.ReaderError as exc:  # a control character: its message spans lines
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(source, [f"line {line}: not valid YAML: character "
                                   f"#x{exc.character:04x} is not allowed"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_describe_yaml_error(exc)]) from exc
    if raw is None:
        # A truncated or blanked file must not be taken for "every default": on a reload that
        # would swap the configured forwarders for the console one and drop the real traffic.
        raise ConfigError(source, ["(top level): the file has no settings; write {} to run on "
                                   "every default"])
    try:
        config = build_config(raw, source)
    except ConfigError as exc:
        raise ConfigError(source, duplicates + exc.errors) from exc
    if duplicates:
        raise ConfigError(source, duplicates)
    return config


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key written twice in one mapping is reported: PyYAML alone
    silently keeps the last one, so an operator's first setting would quietly not apply."""

    def load_checked(self) -> tuple[Any, list[str]]:
        """Return the document and one error line per duplicated key."""
        try:
            node = self.get_single_node()
            if node is None:
                return None, []
            duplicates = list(_duplicate_keys(node, (), set()))
            return self.construct_document(node), duplicates
        finally:
            self.dispose()


def _duplicate_keys(node: yaml.Node, path: tuple[Any, ...], seen: set[int]) -> Iterable[str]:
    if id(node) in seen:  # an alias: its node was walked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may be overridden by keys beside it: that is its point
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None:
                if key in first:
                    again, before = _position(key_node.start_mark, first[key])
                    yield (f"{_dotted((*path, key))}: duplicate key at {again} (first at "
                           f"{before}); only one may be given")
                else:
                    first[key] = key_node.start_mark
            yield from _duplicate_keys(value_node, (*path, key), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, index), seen)


def _position(mark: yaml.Mark, other: yaml.Mark) -> tuple[str, str]:
    """Both marks as "line N", with columns when they share a line (a flow mapping)."""
    if mark.line != other.line:
        return f"line {mark.line + 1}", f"line {other.line + 1}"
    return (f"line {mark.line + 1}, column {mark.column + 1}",
            f"line {other.line + 1}, column {other.column + 1}")


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line that leads with where the broken construct starts: for an unclosed quote or
    bracket PyYAML's own position (``problem_mark``) is where it gave up, often the file's end."""
    problem = getattr(exc, "problem", None) or str(exc)
    problem_mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if problem_mark is None:
        return f"not valid YAML: {problem}"
    if context is None or context_mark is None:
        return (f"line {problem_mark.line + 1}: not valid YAML: {problem} (column "
                f"{problem_mark.column + 1})")
    found_at = f"line {problem_mark.line + 1}, column {problem_mark.column + 1}"
    construct = re.sub(r"^while (scanning|parsing|constructing) ", "", context)
    return (f"line {context_mark.line + 1}: not valid YAML: {construct} started here (column "
            f"{context_mark.column + 1}); {problem} at {found_at}")


def validate_in_child(enabled: bool = True) -> None:
    """From now on, :func:`build_config` validates in a forked child while ``jsonschema`` is
    not imported in this process. The daemon asks for it: jsonschema, its ``referencing``,
    ``rpds`` and ``attrs`` and a compiled validator are ~8 MB of RSS that a running daemon
    would otherwise keep for its whole life, to be used only at start-up and at each reload.
    The result is the same either way (the child runs the same :func:`build_config` and sends
    back the config or the errors); a child that cannot be forked, fails or takes longer than
    :data:`CHILD_TIMEOUT` is replaced by validating here. The cost: each reload imports
    jsonschema again in its child (measured at load 8: 0.27 s a reload, where validating in a
    process that holds jsonschema takes 8 ms; start-up pays the import either way)."""
    global _in_child
    _in_child = enabled


def build_config(raw: Any, source: str = "<config>") -> Config:
    """Validate a parsed config document and fill defaults; raise :class:`ConfigError`."""
    if _in_child and not _jsonschema_loaded():
        kind, value = _build_in_child(raw, source)
        if kind == "config":
            return value  # type: ignore[no-any-return]
        if kind == "errors":
            raise ConfigError(source, value)
    return _build_config(raw, source)


def _jsonschema_loaded() -> bool:
    """Whether this process holds jsonschema already (a route change imports it): then the
    child would save nothing."""
    return "jsonschema" in sys.modules


def _build_in_child(raw: Any, source: str) -> tuple[str, Any]:
    """(``"config"``, the config) or (``"errors"``, the error lines) from a forked child's
    :func:`build_config`; (``"failed"``, why) if the child could not tell."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return "failed", str(exc)
    if pid == 0:  # the child: never returns
        status = 70
        try:
            os.close(read_fd)
            try:
                result: tuple[str, Any] = ("config", _build_config(raw, source))
            except ConfigError as exc:
                result = ("errors", exc.errors)
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(pickle.dumps(result))
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while select.select([pipe], [], [], CHILD_TIMEOUT)[0]:
            chunk = pipe.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        else:  # timed out
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not chunks:
        return "failed", f"validating child ended with status {status:#x}"
    kind, value = pickle.loads(b"".join(chunks))
    return kind, value


def _build_config(raw: Any, source: str) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys to values"])
    errors = _schema_errors(main_schema(), raw, ())
    config = copy.deepcopy(raw)
    fill_defaults(main_schema(), config)  # only adds absent keys: harmless on a bad document
    forwarders = config.get("forwarders")
    if isinstance(forwarders, dict):  # else the main schema has said what is wrong with it
        for name, section in forwarders.items():
            if isinstance(section, dict):
                errors += _forwarder_errors(name, section)
    if not errors:
        errors += _mapping_errors(config)
        errors += _graphite_errors(config)
        errors += _workers_errors(config)
    if errors:
        raise ConfigError(source, errors)
    return config


def _mapping_errors(config: Config) -> list[str]:
    """``mapping_file`` and ``graphite_templates`` compiled once here, so a bad rule stops the
    start (or the reload) with its key named instead of failing in the receive path."""
    from pystatsd.mapping import MappingError, load_mapper

    try:
        load_mapper(config)
    except MappingError as exc:
        return [str(exc)]
    return []


def _graphite_errors(config: Config) -> list[str]:
    """Graphite listeners' ``graphite_datapoints`` and ``graphite_rules``, checked against
    the mode and the rule lists, so a listener asking for what cannot be stops the start."""
    from pystatsd.graphite_ingest import graphite_config_errors

    return graphite_config_errors(config, config.get("listeners") or [])


def _workers_errors(config: Config) -> list[str]:
    """Relay forwarders route each line as it is received, in the receive path: with receive
    workers that path is in other processes, which run no forwarder."""
    if config.get("workers", 1) == 1 or config["mode"] == "global":
        return []
    from forwarders import RelayForwarder

    relays = sorted(name for name, section in config["forwarders"].items()
                    if issubclass(load_forwarder_class(section.get("type", name)),
                                  RelayForwarder))
    if config["mode"] == "relay" or relays:
        return [f"workers: more than 1 needs mode aggregate and no relay forwarder "
                f"(relays route in the receive path): {', '.join(relays) or 'mode relay'}"]
    return []


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
    import jsonschema  # here, not at the top: see validate_in_child

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
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        return [f"{_dotted((*path, str(key)))}: unknown key{_known_hint(str(key), allowed)}"
                for key in unknown]
    if error.validator == "enum":
        choices = ", ".join(map(str, error.validator_value))
        return [f"{_dotted(path)}: {error.instance!r} is not one of: {choices}"]
    if error.validator == "oneOf":
        choices = " or ".join(map(_alternative, error.validator_value))
        return [f"{_dotted(path)}: {error.instance!r} is not {choices}"]
    return [f"{_dotted(path)}: {error.message}"]


def _alternative(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " or ".join(map(str, schema["enum"]))
    if "minimum" in schema:
        return f"{schema.get('type', 'a number')} >= {schema['minimum']}"
    return str(schema.get("type", schema))


# Up to this many known keys are listed when none is close to an unknown one; past it the list
# is a wall of names (the daemon has 26) and the reference is the better pointer.
_KNOWN_KEYS_LISTED = 8


def _known_hint(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if len(allowed) <= _KNOWN_KEYS_LISTED:
        return f" (known: {', '.join(allowed)})"
    return ' (none is close; see README "Configuration" or pystatsd --print-default-config)'


def _dotted(path: Iterable[Any]) -> str:
    text = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
    return text or "(top level)"
