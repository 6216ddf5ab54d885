"""Live routing: the operator's route changes, kept on top of the config file.

A relay forwarder that supports runtime routes (:meth:`forwarders.RelayForwarder.routes`)
has its destinations (``statsd_relay``: its destination groups; ``carbon_routes``: its routes;
``statsite_proxy``: its servers) changed by the admin
commands (``route add|del|patt|mod|reset``, the HTTP ``/routes`` endpoints). The daemon never
edits the config file: each change is recorded in the *overlay*, per forwarder and per route
name: the route's whole new object, or ``null`` for a route the operator removed. The routes a
relay runs are always the file's routes with the overlay applied on top, route by route: an
overlaid name replaces the file's route of that name (or is added after the file's routes), a
``null`` removes it. An overlay entry equal to the file's route is dropped, so deleting a route
that was added at runtime leaves no trace.

The overlay lives in ``<state_dir>/routes.json``, written atomically (temporary file, fsync,
rename, fsync of the directory), and is applied again at start-up and after each reload (the
new file underneath, the same overlay on top). ``route reset`` (or ``pystatsd --routes-reset``)
drops it."""

from __future__ import annotations

import copy
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from forwarders import Forwarder, RelayForwarder

if TYPE_CHECKING:
    from pystatsd.daemon import Daemon

log = logging.getLogger("pystatsd.routes")

STATE_FILE = "routes.json"
CONSOLE_SOCKET = "console.sock"  # pystatsd.admin_console's, named here to keep imports one way

Edits = dict[str, dict[str, dict[str, Any] | None]]
"""forwarder name -> route name -> the route's object, or None for removed."""


class RouteError(ValueError):
    """A route command that cannot be done; the message says why."""


def route_name(route: Mapping[str, Any], index: int) -> str:
    return str(route.get("name") or f"group{index}")


def merge(file_routes: list[dict[str, Any]],
          edits: Mapping[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The file's routes with ``edits`` on top (see the module's docstring)."""
    result = []
    seen = set()
    for index, route in enumerate(file_routes):
        name = route_name(route, index)
        seen.add(name)
        replaced = edits.get(name, route) if name in edits else route
        if replaced is not None:
            result.append(copy.deepcopy({**replaced, "name": name}))
    result.extend(copy.deepcopy({**route, "name": name}) for name, route in edits.items()
                  if name not in seen and route is not None)
    return result


def load_edits(path: Path) -> Edits:
    """The overlay saved at ``path``; empty when there is none. A file that is not ours is
    logged and ignored (the file's routes run), never a reason not to start."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        log.error("route overlay %s unreadable, running the config file's routes: %s",
                  path, exc)
        return {}
    forwarders = data.get("forwarders") if isinstance(data, dict) else None
    if not isinstance(forwarders, dict) or not all(
            isinstance(v, dict) for v in forwarders.values()):
        log.error("route overlay %s is not a pystatsd route overlay; ignored", path)
        return {}
    return forwarders


def save_edits(path: Path, edits: Edits) -> None:
    """Write the overlay atomically: a crash leaves the old file or the new one, whole."""
    body = orjson.dumps({"version": 1, "forwarders": edits}, option=orjson.OPT_INDENT_2)
    fd, temporary = tempfile.mkstemp(prefix=".routes-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def routable(forwarders: Mapping[str, Forwarder]) -> dict[str, RelayForwarder]:
    """The forwarders whose routes can change at runtime."""
    return {name: f for name, f in forwarders.items()
            if isinstance(f, RelayForwarder) and f.routes() is not None}


class RouteOverlay:
    """The daemon's side of live routing: keeps the overlay, applies it through the hook."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.path = Path(daemon.config["state_dir"]) / STATE_FILE
        self.edits = load_edits(self.path)
        self._lock = threading.Lock()  # one route change at a time, and none during a reload

    # -- start-up and reload ----------------------------------------------------------
    def apply_to(self, forwarders: Iterable[Forwarder], config: Mapping[str, Any]) -> None:
        """Put the overlay on top of these (new) forwarders' routes in ``config`` (the file
        being started or reloaded). An overlay the file no longer allows is logged, and the
        file's routes run."""
        with self._lock:
            for forwarder in forwarders:
                edits = self.edits.get(forwarder.name)
                if not edits or not isinstance(forwarder, RelayForwarder) \
                        or forwarder.routes() is None:
                    continue
                try:
                    forwarder.apply_routes(merge(self._file_routes(forwarder, config),
                                                 edits))
                    log.info("forwarder %s: route overlay applied (%s)", forwarder.name,
                             ", ".join(sorted(edits)))
                except ValueError as exc:
                    log.error("forwarder %s: route overlay not applied, running the config "
                              "file's routes: %s", forwarder.name, exc)

    def _file_routes(self, relay: RelayForwarder,
                     config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The relay's routes as its section in ``config`` (default: the running one) lists
        them, named (each relay class knows where its section keeps them)."""
        section = (config or self.daemon.config)["forwarders"].get(relay.name, {})
        return copy.deepcopy(type(relay).config_routes(section))

    # -- what the admin commands call -------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "forwarders": copy.deepcopy(self.edits)}

    def listing(self) -> list[tuple[str, dict[str, Any], str]]:
        """(``forwarder/route``, route, ``config`` or ``runtime``) for every route."""
        rows = []
        for name, relay in routable(self.daemon.forwarders).items():
            edits = self.edits.get(name, {})
            for route in relay.routes() or []:
                origin = "runtime" if route["name"] in edits else "config"
                rows.append((f"{name}/{route['name']}", route, origin))
        return rows

    def resolve(self, key: str) -> tuple[str, str]:
        """``forwarder/route`` or ``route`` (when one relay has runtime routes) -> names."""
        relays = routable(self.daemon.forwarders)
        forwarder, sep, route = key.rpartition("/")
        if sep:
            if forwarder not in relays:
                raise RouteError(f"no relay forwarder {forwarder!r} with runtime routes")
            return forwarder, route
        if len(relays) != 1:
            raise RouteError("several relays (or none) have routes: name one as "
                             f"FORWARDER/{route}; relays: {', '.join(relays) or 'none'}")
        return next(iter(relays)), route

    def relay_of(self, key: str) -> RelayForwarder:
        """The relay a route key names."""
        return routable(self.daemon.forwarders)[self.resolve(key)[0]]

    def current(self, key: str) -> tuple[str, str, dict[str, Any] | None]:
        forwarder, name = self.resolve(key)
        relay = routable(self.daemon.forwarders)[forwarder]
        found = [r for r in relay.routes() or [] if r["name"] == name]
        return forwarder, name, (found[0] if found else None)

    def put(self, key: str, route: dict[str, Any] | None) -> None:
        """Set route ``key`` to ``route`` (added or changed), or remove it (None); applied
        to the relay, then saved. Raises RouteError when the relay refuses it."""
        forwarder, name = self.resolve(key)
        with self._lock:
            edits = copy.deepcopy(self.edits.get(forwarder, {}))
            file_routes = {route_name(r, i): r for i, r in enumerate(
                self._file_routes(routable(self.daemon.forwarders)[forwarder]))}
            if route is not None:
                route = {**route, "name": name}
            edits[name] = route
            if name in file_routes and route == {**file_routes[name], "name": name}:
                del edits[name]  # back to what the file says: nothing to keep
            if name not in file_routes and route is None:
                del edits[name]
            self._apply(forwarder, edits)

    def reset(self) -> list[str]:
        """Drop the whole overlay; every relay runs its file's routes again."""
        with self._lock:
            names = [name for name, edits in self.edits.items() if edits]
            for name in names:
                self._apply(name, {})
            self.edits = {}
            self._save()
        return names

    def _apply(self, forwarder: str, edits: dict[str, dict[str, Any] | None]) -> None:
        relay = routable(self.daemon.forwarders).get(forwarder)
        if relay is None:
            raise RouteError(f"no relay forwarder {forwarder!r} with runtime routes")
        try:
            relay.apply_routes(merge(self._file_routes(relay), edits))
        except ValueError as exc:
            raise RouteError(str(exc)) from None
        if edits:
            self.edits[forwarder] = edits
        else:
            self.edits.pop(forwarder, None)
        self._save()

    def _save(self) -> None:
        try:
            save_edits(self.path, self.edits)
        except OSError as exc:  # applied but not kept: say so, the next start runs the file
            log.error("route change applied but not saved to %s (lost at restart): %s",
                      self.path, exc)
            raise RouteError(f"applied, but not saved to {self.path}: {exc}") from None



def reset_command(config: Mapping[str, Any]) -> int:
    """``pystatsd --routes-reset``: ask the running daemon through its 0600 console socket;
    when none answers, remove the saved overlay so the next start runs the file's routes."""
    state_dir = Path(config["state_dir"])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(state_dir / CONSOLE_SOCKET))
            sock.sendall(b"route reset\nquit\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        print(f"no pystatsd running; removed {state_dir / STATE_FILE}")
        return 0
    except OSError as exc:
        print(f"cannot ask pystatsd: {exc}", file=sys.stderr)
        return 4
    text = answer.decode("utf-8", "replace").strip()
    print(text)
    return 0 if text.startswith("OK") else 1
