"""What relays with runtime routes (the :meth:`~forwarders.RelayForwarder.apply_routes` hook)
share: turning the hook's objects back into checked section entries, and telling, after a
change, which destinations are kept and which retire.

A relay's route change (``carbon_routes``, ``statsite_proxy``) is: these entries checked,
the lines already buffered placed the old way, the new destinations built reusing the ones
whose :attr:`identity` is named again, then the kept, new and retired ones swapped in
together. Only the middle step is the relay's own."""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from forwarders.schema import fill_defaults

__all__ = ["by_identity", "hook_routes", "retire", "route_entries"]


def hook_routes(entries: Iterable[Mapping[str, Any]], name_key: str) -> list[dict[str, Any]]:
    """Section entries as :meth:`~forwarders.RelayForwarder.routes` returns them: copies,
    each with its ``name_key`` field as ``name`` (first)."""
    return [{"name": entry[name_key],
             **{k: copy.deepcopy(v) for k, v in entry.items() if k != name_key}}
            for entry in entries]


def route_entries(routes: list[dict[str, Any]], *, list_key: str, name_key: str,
                  schema: Mapping[str, Any], error: type[ValueError]) -> list[dict[str, Any]]:
    """The hook's objects as entries of the section's ``list_key`` list: each one's ``name``
    made its ``name_key`` field, checked against ``schema`` (that list's schema), defaults
    filled. Raises ``error`` naming the first fault by its place (``servers[1].weight: ...``)."""
    entries = []
    for index, route in enumerate(routes):
        entry = {k: v for k, v in copy.deepcopy(route).items() if k != "name"}
        name = route.get("name", entry.get(name_key))
        if name_key in entry and entry[name_key] != name:
            raise error(f"{list_key}[{index}]: {name_key} {entry[name_key]!r} is not its "
                        f"name {name!r}")
        if name is not None:
            entry[name_key] = name
        entries.append(entry)
    import jsonschema  # at a route change only: a daemon keeps it out of its RSS otherwise

    faults = sorted(jsonschema.Draft202012Validator(schema).iter_errors(entries),
                    key=lambda e: list(e.path))
    if faults:
        first = faults[0]
        where = list_key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                   for p in first.path)
        raise error(f"{where}: {first.message}")
    fill_defaults(schema, entries)
    return entries


class _Named(Protocol):
    identity: str | None


_D = TypeVar("_D", bound=_Named)


def by_identity(destinations: Iterable[_D]) -> dict[str, _D]:
    """The destinations a route change may reuse: every one with an identity, by it."""
    return {d.identity: d for d in destinations if d.identity is not None}


def retire(current: Iterable[_D], kept: Collection[_D],
           retiring: Sequence[_D]) -> tuple[list[_D], list[_D]]:
    """After a change to ``kept``: (every destination now retiring, those of ``current`` that
    this change removed). One named again stops retiring; a retiring one keeps sending what
    it holds until it is empty."""
    removed = [d for d in current if d not in kept]
    return [d for d in retiring if d not in kept] + removed, removed
