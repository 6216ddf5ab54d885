"""carbon-relay-ng's matchers, blocklist and rewriters, for graphite paths.

A matcher has up to six options (prefix, not_prefix, sub, not_sub, regex, not_regex); a path
matches when it satisfies every option that is set, and an empty matcher matches everything.
Regular expressions are not anchored (``^`` and ``$`` anchor them), as carbon-relay-ng's.

A blocklist entry is carbon-relay-ng's ``"<type> <expression>"`` string (``prefix
collectd.localhost``, ``regex ^foo\\..*``). A rewriter replaces ``old`` by ``new`` at most
``max`` times (-1: all), or, with ``old`` written ``/regex/``, substitutes the regex, where
``new`` may name groups as Go does (``$1``, ``${1}``, ``${name}``, ``$$`` for a dollar); with
``not`` set (a substring, or ``/regex/``) a path that matches it is left alone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MATCHER_KEYS", "Matcher", "Rewriter", "blocklist_matcher", "go_template"]

MATCHER_KEYS = ("prefix", "not_prefix", "sub", "not_sub", "regex", "not_regex")


class Matcher:
    """Given a mapping with any of :data:`MATCHER_KEYS`, tells whether a path matches."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.prefix = options.get("prefix") or ""
        self.not_prefix = options.get("not_prefix") or ""
        self.sub = options.get("sub") or ""
        self.not_sub = options.get("not_sub") or ""
        self.regex = re.compile(options["regex"]) if options.get("regex") else None
        self.not_regex = re.compile(options["not_regex"]) if options.get("not_regex") else None

    def matches(self, path: str) -> bool:
        if self.prefix and not path.startswith(self.prefix):
            return False
        if self.not_prefix and path.startswith(self.not_prefix):
            return False
        if self.sub and self.sub not in path:
            return False
        if self.not_sub and self.not_sub in path:
            return False
        if self.regex is not None and self.regex.search(path) is None:
            return False
        return self.not_regex is None or self.not_regex.search(path) is None


_BLOCKLIST_TYPES = {"prefix": "prefix", "notPrefix": "not_prefix", "sub": "sub",
                    "notSub": "not_sub", "regex": "regex", "notRegex": "not_regex"}


def blocklist_matcher(entry: str) -> Matcher:
    """``"<type> <expression>"`` -> its matcher; ``ValueError`` naming the entry if bad."""
    kind, _, expression = entry.strip().partition(" ")
    key = _BLOCKLIST_TYPES.get(kind) or (kind if kind in MATCHER_KEYS else None)
    if key is None or not expression:
        raise ValueError(f"blocklist entry {entry!r} is not '<type> <expression>' with type "
                         f"one of {', '.join(_BLOCKLIST_TYPES)}")
    return Matcher({key: expression.strip()})


_GO_REFERENCE = re.compile(r"\$(?:\$|\{(\w+)\}|(\w+))")


def go_template(template: str) -> str:
    """Go's ``Regexp.Expand`` template -> Python's ``re.sub`` one."""
    def convert(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        return f"\\g<{name}>"

    return _GO_REFERENCE.sub(convert, template.replace("\\", "\\\\"))


class Rewriter:
    """One rewriter: ``rewrite(path)`` returns the new path (the same when it does not
    apply)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        old: str = options["old"]
        self.new: str = options["new"]
        self.max: int = int(options.get("max", -1))
        self.regex = re.compile(old[1:-1]) if len(old) >= 2 and old[0] == old[-1] == "/" \
            else None
        self.old = old
        if self.regex is not None:
            self.template = go_template(self.new)
        skip = options.get("not") or ""
        self.skip_regex = re.compile(skip[1:-1]) if len(skip) >= 2 and skip[0] == skip[-1] \
            == "/" else None
        self.skip = skip if self.skip_regex is None else ""

    def rewrite(self, path: str) -> str:
        if self.skip and self.skip in path:
            return path
        if self.skip_regex is not None and self.skip_regex.search(path) is not None:
            return path
        if self.regex is not None:
            return self.regex.sub(self.template, path, count=0 if self.max < 0 else self.max)
        return path.replace(self.old, self.new, self.max)
