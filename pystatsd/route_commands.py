"""The console's ``route`` commands, carbon-relay-ng's (its telnet admin), on relay groups.

    route list                          every route: KEY pattern=REGEX backends=A,B origin=...
    route add <key> [pattern] <addr>... add a group (empty pattern: every metric)
    route del <key>                     remove the group (a config file group stays removed)
    route patt <key> [pattern]          set the group's filter regex (none: every metric)
    route mod <key> <addr>...           pystatsd's: replace the group's backends
    route reset                         pystatsd's: drop every runtime change
    route help                          these lines

A key is a group name, or ``FORWARDER/GROUP`` when several relays have runtime routes. An
address is a relay backend (``host:port[:udp|tcp]``); ``route add``'s first word after the key
is the pattern when it is not an address."""

from __future__ import annotations

from typing import Any

from forwarders.statsd_relay.groups import parse_backend
from pystatsd.route_overlay import RouteError, RouteOverlay

CHANGING = ("add", "del", "patt", "mod", "reset")

HELP = ("commands:\n"
        "    route list                          list routes\n"
        "    route add <key> [pattern] <addr>... add the route. (empty pattern allows all)\n"
        "    route del <key>                     delete the matching route\n"
        "    route patt <key> [pattern]          update pattern for given route key.  (empty "
        "pattern allows all)\n"
        "    route mod <key> <addr>...           replace the route's backends\n"
        "    route reset                         drop every runtime route change\n\n")


def _is_address(word: str) -> bool:
    try:
        parse_backend(word)
    except ValueError:
        return False
    return True


def _addresses(words: list[str]) -> list[str]:
    bad = [word for word in words if not _is_address(word)]
    if bad:
        raise RouteError(f"not a backend address (host:port[:udp|tcp]): {bad[0]}")
    if not words:
        raise RouteError("give at least one backend address")
    return words


def describe_route(key: str, route: dict[str, Any], origin: str) -> str:
    backends = ",".join(b if isinstance(b, str) else f"{b['host']}:{b['port']}:"
                        f"{b.get('protocol', 'udp')}" for b in route["backends"])
    return f"{key} pattern={route.get('filter') or ''} backends={backends} origin={origin}"


def route_command(overlay: RouteOverlay, words: list[str]) -> str:
    """The answer to ``route WORDS...``."""
    if not words or words[0] == "list":
        return "".join(describe_route(*row) + "\n" for row in overlay.listing()) + "END\n\n"
    action, arguments = words[0], words[1:]
    if action == "help":
        return HELP
    try:
        if action == "reset":
            dropped = overlay.reset()
            return f"OK reset {', '.join(dropped) or 'nothing'}\n"
        if not arguments:
            raise RouteError(f"route {action} needs a key")
        key, rest = arguments[0], arguments[1:]
        _, name, current = overlay.current(key)
        if action == "add":
            if current is not None:
                raise RouteError(f"route {name} exists (change it with patt or mod)")
            route: dict[str, Any] = {}
            if rest and not _is_address(rest[0]):
                route["filter"] = rest.pop(0)
            route["backends"] = _addresses(rest)
            overlay.put(key, route)
        elif action in ("del", "patt", "mod"):
            if current is None:
                raise RouteError(f"no route {name}")
            if action == "del":
                overlay.put(key, None)
            elif action == "patt":
                changed = {k: v for k, v in current.items() if k != "filter"}
                if len(rest) > 1:
                    raise RouteError("route patt takes one pattern (none: every metric)")
                if rest:
                    changed["filter"] = rest[0]
                overlay.put(key, changed)
            else:
                overlay.put(key, {**current, "backends": _addresses(rest)})
        else:
            raise RouteError(f"unknown route command {action!r}; see help")
    except RouteError as exc:
        return f"ERROR {exc}\n"
    return "OK\n"
