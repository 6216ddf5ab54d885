"""The console's ``route`` commands, carbon-relay-ng's (its telnet admin), on relay routes.

On a ``statsd_relay`` (its destination groups):

    route list                          every route: KEY pattern=REGEX backends=A,B origin=...
    route add <key> [pattern] <addr>... add a group (empty pattern: every metric)
    route del <key>                     remove the group (a config file group stays removed)
    route patt <key> [pattern]          set the group's filter regex (none: every metric)
    route mod <key> <addr>...           pystatsd's: replace the group's backends
    route reset                         pystatsd's: drop every runtime change
    route help                          these lines

A key is a group name, or ``FORWARDER/GROUP`` when several relays have runtime routes. An
address is a relay backend (``host:port[:udp|tcp]``); ``route add``'s first word after the key
is the pattern when it is not an address.

On a ``carbon_routes`` relay, carbon-relay-ng's ``addRoute``/``modRoute``/``modDest``/
``delRoute`` with the key first (options as carbon-relay-ng spells them, ``notPrefix=``...):

    route add <key> <type> [opts] <addr> [dest opts] [<addr> [dest opts]]...
          type: sendAllMatch sendFirstMatch consistentHashing consistentHashing-v2
          opts: prefix= notPrefix= sub= notSub= regex= notRegex= (replicationFactor=)
          addr: host:port, or host:port:instance; dest opts: the matchers, pickle=,
          spool=, connbuf= (queued lines), spoolMaxBytes=
    route mod <key> <opts>...           modRoute: set the route's matchers (empty: unset)
    route moddest <key> <index> <opts>  modDest: addr= and the matchers of one destination
    route patt <key> [regex]            the route's regex (none: every path)
    route del <key>

On a ``statsite_proxy`` relay (a route is a server on the ring):

    route add <ip:port> <weight>        append a server
    route mod <ip:port> <weight>        change its weight
    route del <ip:port>
"""

from __future__ import annotations

import re
from typing import Any

from forwarders.statsd_relay.groups import parse_backend
from pystatsd.route_overlay import RouteError, RouteOverlay

CHANGING = ("add", "del", "patt", "mod", "moddest", "reset")

HELP = ("commands:\n"
        "    route list                          list routes\n"
        "    route add <key> [pattern] <addr>... add the route. (empty pattern allows all)\n"
        "    route del <key>                     delete the matching route\n"
        "    route patt <key> [pattern]          update pattern for given route key.  (empty "
        "pattern allows all)\n"
        "    route mod <key> <addr>...           replace the route's backends\n"
        "    route reset                         drop every runtime route change\n"
        "  carbon_routes (carbon-relay-ng's addRoute, modRoute, modDest):\n"
        "    route add <key> <type> [opts] <addr> [dest opts]...  type: sendAllMatch, "
        "sendFirstMatch, consistentHashing, consistentHashing-v2\n"
        "    route mod <key> <opts>...           prefix= notPrefix= sub= notSub= regex= "
        "notRegex=\n"
        "    route moddest <key> <index> <opts>  addr= and the matchers of one destination\n"
        "  statsite_proxy:\n"
        "    route add <ip:port> <weight>        put a server on the ring\n"
        "    route mod <ip:port> <weight>        change its weight\n\n")


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
    if "destinations" in route:  # carbon_routes
        matchers = "".join(f" {_CAMEL[k]}={route[k]}" for k in _MATCHERS if route.get(k))
        destinations = ",".join(d["address"] + (f":{d['instance']}" if d.get("instance") else "")
                                for d in route["destinations"])
        kind = _KIND_NAMES.get(route["type"], route["type"])
        return f"{key} type={kind}{matchers} destinations={destinations} origin={origin}"
    if "weight" in route:  # statsite_proxy
        return f"{key} weight={route['weight']} origin={origin}"
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
        routes_key = overlay.relay_of(key).ROUTES_KEY
        if routes_key == "routes":
            _carbon_command(overlay, action, key, name, current, rest)
            return "OK\n"
        if routes_key == "servers":
            _server_command(overlay, action, key, name, current, rest)
            return "OK\n"
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


# -- carbon_routes ------------------------------------------------------------------------

_MATCHERS = ("prefix", "not_prefix", "sub", "not_sub", "regex", "not_regex")
_CAMEL = {"prefix": "prefix", "not_prefix": "notPrefix", "sub": "sub", "not_sub": "notSub",
          "regex": "regex", "not_regex": "notRegex"}
_KINDS = {"sendAllMatch": "send_all_match", "sendFirstMatch": "send_first_match",
          "consistentHashing": "consistent_hashing",
          "consistentHashing-v2": "consistent_hashing_v2"}
_KIND_NAMES = {snake: camel for camel, snake in _KINDS.items()}
_ROUTE_OPTIONS = {**{camel: snake for snake, camel in _CAMEL.items()},
                  "replicationFactor": "replication_factor"}
_DEST_OPTIONS = {**{camel: snake for snake, camel in _CAMEL.items()}, "pickle": "pickle",
                 "spool": "spool", "connbuf": "queue_lines", "spoolMaxBytes": "spool_max_bytes"}
_INTEGER_OPTIONS = ("replication_factor", "queue_lines", "spool_max_bytes")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[^\s:=\[\]]+):(\d+)(?::([^\s:=]+))?$")


def _option(word: str, known: dict[str, str], what: str) -> tuple[str, Any]:
    """``name=value`` -> (the schema's key, its value); RouteError naming what is wrong."""
    name, equals, value = word.partition("=")
    if not equals or name not in known:
        raise RouteError(f"unknown {what} option {word!r}; known: {', '.join(known)}")
    key = known[name]
    if key in ("pickle", "spool"):
        if value not in ("true", "false"):
            raise RouteError(f"{name} must be true or false, not {value!r}")
        return key, value == "true"
    if key in _INTEGER_OPTIONS:
        if not value.isdigit():
            raise RouteError(f"{name} must be a whole number, not {value!r}")
        return key, int(value)
    return key, value


def _destination(address: str) -> dict[str, Any]:
    match = _ADDRESS.match(address)
    if match is None:
        raise RouteError(f"not a carbon address (host:port[:instance]): {address}")
    host, port, instance = match.groups()
    spec: dict[str, Any] = {"address": f"{host}:{port}"}
    if instance:
        spec["instance"] = instance
    return spec


def _apply_options(target: dict[str, Any], words: list[str], known: dict[str, str],
                   what: str) -> None:
    for word in words:
        key, value = _option(word, known, what)
        if value == "" and key in _MATCHERS:
            target.pop(key, None)  # an empty matcher is no matcher
        else:
            target[key] = value


def _carbon_route(words: list[str]) -> dict[str, Any]:
    """``<type> [opts] <addr> [dest opts]...`` -> a ``routes`` entry (without its key)."""
    if not words or words[0] not in _KINDS:
        raise RouteError(f"give the route type first: {', '.join(_KINDS)}")
    route: dict[str, Any] = {"type": _KINDS[words[0]], "destinations": []}
    current = route
    for word in words[1:]:
        if "=" not in word:
            current = _destination(word)
            route["destinations"].append(current)
            continue
        if current is route:
            _apply_options(route, [word], _ROUTE_OPTIONS, "route")
        else:
            _apply_options(current, [word], _DEST_OPTIONS, "destination")
    if not route["destinations"]:
        raise RouteError("give at least one destination address")
    return route


def _without_defaults(route: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in route.items() if k != "name"}


def _carbon_command(overlay: RouteOverlay, action: str, key: str, name: str,
                    current: dict[str, Any] | None, rest: list[str]) -> None:
    if action == "add":
        if current is not None:
            raise RouteError(f"route {name} exists (change it with mod or moddest)")
        overlay.put(key, _carbon_route(rest))
        return
    if current is None:
        raise RouteError(f"no route {name}")
    changed = _without_defaults(current)
    if action == "del":
        overlay.put(key, None)
        return
    if action == "mod":
        if not rest:
            raise RouteError("route mod takes options: prefix= notPrefix= sub= notSub= "
                             "regex= notRegex=")
        _apply_options(changed, rest, _ROUTE_OPTIONS, "route")
    elif action == "patt":
        if len(rest) > 1:
            raise RouteError("route patt takes one regex (none: every path)")
        changed.pop("regex", None)
        if rest:
            changed["regex"] = rest[0]
    elif action == "moddest":
        if not rest or not rest[0].isdigit() or int(rest[0]) >= len(changed["destinations"]):
            raise RouteError(f"route moddest needs a destination index below "
                             f"{len(changed['destinations'])}")
        destination = changed["destinations"][int(rest[0])]
        for word in rest[1:]:
            if word.startswith("addr="):
                destination.pop("instance", None)
                destination.update(_destination(word[len("addr="):]))
            else:
                _apply_options(destination, [word], _DEST_OPTIONS, "destination")
    else:
        raise RouteError(f"unknown route command {action!r}; see help")
    overlay.put(key, changed)


# -- statsite_proxy -----------------------------------------------------------------------

def _server_command(overlay: RouteOverlay, action: str, key: str, name: str,
                    current: dict[str, Any] | None, rest: list[str]) -> None:
    if action in ("add", "mod"):
        if action == "add" and current is not None:
            raise RouteError(f"server {name} is on the ring (change its weight with mod)")
        if action == "mod" and current is None:
            raise RouteError(f"no server {name}")
        if len(rest) != 1 or not rest[0].isdigit():
            raise RouteError(f"route {action} <ip:port> <weight>: give one whole weight")
        overlay.put(key, {"weight": int(rest[0])})
    elif action == "del":
        if current is None:
            raise RouteError(f"no server {name}")
        overlay.put(key, None)
    else:
        raise RouteError(f"route {action} does not apply to a statsite_proxy server")
