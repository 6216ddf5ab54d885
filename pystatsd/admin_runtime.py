"""Starts and stops what operates the daemon from outside: the watchdog, the console (TCP
and the 0600 Unix socket) and HTTP, all from the ``admin`` config section."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pystatsd import systemd
from pystatsd.admin_auth import TokenGuard
from pystatsd.admin_console import tcp_console, unix_console
from pystatsd.admin_control import AdminControl
from pystatsd.bounded_server import ServingThread
from pystatsd.watchdog import Watchdog

if TYPE_CHECKING:
    from pystatsd.daemon import Daemon

log = logging.getLogger("pystatsd.admin")


class AdminRuntime:
    def __init__(self, daemon: Daemon) -> None:
        settings = daemon.config["admin"]
        self.watchdog = Watchdog(daemon, systemd.watchdog_interval())
        self.control = AdminControl(daemon, self.watchdog, float(settings["readiness_window"]))
        guard = TokenGuard(settings["token"])
        limit, timeout = settings["max_connections"], float(settings["connection_timeout"])
        self.servers: dict[str, ServingThread] = {}
        if settings["console_socket"]:
            state_dir = Path(daemon.config["state_dir"])
            try:
                self.servers["console unix"] = unix_console(self.control, guard, state_dir,
                                                            limit, timeout)
            except OSError as exc:  # like admin.sock: a convenience, never a reason not to run
                log.warning("no console socket in %s: %s", state_dir, exc.strerror or exc)
        try:
            console, http = settings["console"], settings["http"]
            if console["enabled"]:
                self.servers["console tcp"] = tcp_console(
                    self.control, guard, console["address"], console["port"], limit, timeout)
            if http["enabled"]:
                # prometheus_client and http.server (~8 MB RSS) only when it is enabled
                from pystatsd.admin_http import http_admin

                self.servers["http"] = http_admin(self.control, guard, http["address"],
                                                  http["port"], limit, timeout)
        except OSError as exc:
            self._close()
            raise OSError(exc.errno, f"admin interface cannot bind: {exc.strerror or exc}") \
                from exc

    def start(self) -> None:
        self.watchdog.start()
        for name, serving in self.servers.items():
            serving.start()
            address: Any = serving.server.server_address
            where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
            log.info("admin %s on %s", name, where)

    def stop(self) -> None:
        self.watchdog.stop()
        self._close()

    def _close(self) -> None:
        for serving in self.servers.values():
            serving.stop()
        self.servers = {}
