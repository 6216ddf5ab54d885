"""The text console's commands, answered in the formats of the tools operators come from.

``status`` is lyft statsrelay's (its ``stats_send_statistics``, line for line: the global
lines, a block per destination group, a block per relay backend, then pystatsd's own lines in
the same ``scope name type value`` shape, ended by an empty line). ``help``, ``stats``,
``counters``, ``gauges``, ``timers``, ``del*``, ``health`` and ``quit`` are Etsy statsd's
(``stats.js``, ``lib/mgmt_console.js``); ``route ...`` is carbon-relay-ng's (see
:mod:`pystatsd.route_commands`); ``sets``/``delsets``, ``loglevel`` and ``auth`` are
pystatsd's additions in the same style.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pystatsd import route_commands
from pystatsd.admin_auth import TokenGuard
from pystatsd.admin_control import KINDS, AdminControl
from pystatsd.node_inspect import inspect, js_number

HELP = ("Commands: status, stats, counters, timers, gauges, sets, delcounters, deltimers, "
        "delgauges, delsets, health, loglevel, auth, quit\n\n")
"""Etsy's list as its scripts expect it; ``route help`` lists the route commands."""

_DELETE = {"delcounters": "counters", "delgauges": "gauges", "deltimers": "timers",
           "delsets": "sets"}


class ConsoleSession:
    """One connection's state: whether it may change things (a 0600 socket, or ``auth``)."""

    def __init__(self, control: AdminControl, guard: TokenGuard, trusted: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.control = control
        self.guard = guard
        self.trusted = trusted
        self.authorized = False
        self.clock = clock

    def answer(self, line: str) -> tuple[str, bool]:
        """The reply to one command line, and whether to close the connection after it."""
        words = line.strip().split(" ")
        command, parameters = words[0], [word for word in words[1:] if word]
        if command == "quit":
            return "", True
        if command == "status":
            return self.status(), False
        if command == "help":
            return HELP, False
        if command == "stats":
            return self.stats(), False
        if command in KINDS:
            return inspect(self.control.aggregates(command)) + "\nEND\n\n", False
        if command == "auth":
            return self.auth(parameters), False
        changes = bool(command in _DELETE or (command == "health" and parameters
                                              and parameters[0].lower() in ("up", "down"))
                       or (command == "loglevel" and parameters)
                       or (command == "route" and parameters
                           and parameters[0] in route_commands.CHANGING))
        if changes:
            refused = self.guard.refusal(self.trusted, self.authorized)
            if refused:
                return f"ERROR {refused}\n", False
        if command in _DELETE:
            lines = self.control.forget(_DELETE[command], parameters)
            return "".join(f"{line}\n" for line in lines) + "END\n\n", False
        if command == "health":
            if changes:
                self.control.set_health(parameters[0].lower())
            return f"health: {self.control.health}\n", False
        if command == "route":
            return route_commands.route_command(self.control.route_overlay, parameters), False
        if command == "loglevel":
            if parameters:
                try:
                    self.control.set_log_level(parameters[0])
                except ValueError as exc:
                    return f"ERROR {exc}\n", False
            return f"loglevel: {self.control.log_level()}\n", False
        return "ERROR\n", False

    def auth(self, parameters: list[str]) -> str:
        if len(parameters) == 1 and self.guard.accepts(parameters[0]):
            self.authorized = True
            return "OK\n"
        return "ERROR bad token\n" if self.guard.configured else "ERROR no admin.token is set\n"

    def status(self) -> str:
        """lyft statsrelay's ``status`` answer, plus pystatsd's lines."""
        control = self.control
        counters = control.counters()
        lines = [
            f"global bytes_recv_udp gauge {control.bytes_received('udp')}",
            f"global bytes_recv_tcp gauge {control.bytes_received('tcp')}",
            f"global total_connections gauge {counters.get('listener.tcp.connections', 0)}",
            f"global last_reload timestamp {int(control.daemon.last_reload)}",
            f"global malformed_lines gauge {control.malformed_lines(counters)}",
        ]
        relays = control.relays()
        index = 0
        for relay in relays:
            for group in relay.groups:
                for stat in ("filtered_lines", "rejected_lines"):
                    lines.append(f"group:{index} {stat} gauge {group.counters[stat]}")
                index += 1
        for relay in relays:
            for backend in relay.backends:
                stats = backend.stats()
                dropped = sum(v for k, v in stats.items() if k.startswith("dropped_"))
                key = backend.address.key
                lines += [f"backend:{key} bytes_queued gauge {stats['queued_bytes']}",
                          f"backend:{key} bytes_sent gauge {stats['bytes_sent']}",
                          f"backend:{key} relayed_lines gauge {stats['relayed_lines']}",
                          f"backend:{key} dropped_lines gauge {dropped}",
                          f"backend:{key} failing boolean {stats['failing']}"]
        daemon = control.daemon
        lines.append(f"pystatsd uptime gauge {int(daemon.clock() - daemon.started_at)}")
        lines.append(f"pystatsd health boolean {int(control.health == 'up')}")
        lines += [f"pystatsd {name} counter {value}" for name, value in sorted(counters.items())]
        for name, forwarder in daemon.forwarders.items():
            for key, value in sorted(forwarder.stats().items()):
                try:
                    kind = "counter" if forwarder.stat_kind(key) == "total" else "gauge"
                except KeyError:
                    continue
                lines.append(f"forwarder:{name} {key} {kind} {int(value)}")
        return "\n".join(lines) + "\n\n"

    def stats(self) -> str:
        """Etsy's ``stats``: uptime, its ``messages`` group, then pystatsd's counters and each
        forwarder's stats as ``group.metric: value`` lines."""
        control = self.control
        daemon = control.daemon
        now = self.clock()
        counters = control.counters()
        lines = [f"uptime: {int(now - daemon.started_at)}",
                 f"messages.last_msg_seen: {int(now - control.watchdog.last_received)}",
                 f"messages.bad_lines_seen: {control.malformed_lines(counters)}"]
        lines += [f"pystatsd.{name}: {value}" for name, value in sorted(counters.items())]
        for name, forwarder in daemon.forwarders.items():
            lines += [f"{name}.{key}: {js_number(value)}"
                      for key, value in sorted(forwarder.stats().items())]
        return "\n".join(lines) + "\nEND\n\n"
