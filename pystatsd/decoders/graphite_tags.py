"""Graphite 1.1 tags in a path: ``name;k=v;k2=v2``.

The rules are graphite's own (``carbon.util.TaggedSeries``): a tag name is not empty and holds
none of ``;!^=``; a value is not empty, holds no ``;`` and does not start with ``~``. Carbon
refuses a path that breaks them, so a relay that let one through would only move the failure
to the carbon end."""

from __future__ import annotations

from pystatsd.decoders.errors import DecodeError
from pystatsd.sample import Tags

_BAD_IN_TAG_NAME = frozenset(";!^=")


def split_graphite_tags(path: str) -> tuple[str, Tags]:
    """Given ``name`` or ``name;k=v;...``, return the name and its tags sorted by key (a later
    duplicate key wins); raise ``bad_value`` for a tag graphite would refuse."""
    if ";" not in path:
        return path, ()
    name, *pairs = path.split(";")
    tags: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key or _BAD_IN_TAG_NAME.intersection(key):
            raise DecodeError("bad_value", f"graphite tag {pair[:40]!r} is not name=value")
        if not value or value.startswith("~"):
            raise DecodeError("bad_value", f"graphite tag value {pair[:40]!r} is empty or "
                                           "starts with '~'")
        tags[key] = value
    return name, tuple(sorted(tags.items()))
