"""The HTTP admin interface (off by default; loopback when on).

    GET  /healthz            200 "ok": the process answers
    GET  /readyz             200 "ready", or 503 with one reason a line (health set down, a
                             part of the daemon stuck, a forwarder that cannot deliver)
    GET  /status             the JSON ``pystatsd --status`` prints
    GET  /metrics            Prometheus text exposition (:mod:`pystatsd.metrics_exposition`)
    GET  /loglevel           the current log level
    POST /health/up|down     take the node into or out of a load balancer's rotation
    POST /loglevel/LEVEL     DEBUG, INFO, WARNING or ERROR until the next reload or restart
    GET  /routes             {"routes": {relay: [route, ...]}, "overlay": the runtime changes}
    PUT  /routes/RELAY/NAME  add or replace a route (body: its JSON object, e.g. a statsd_relay
                             group {"filter": "^api", "backends": ["host:port"]}); 400 and
                             the reason when the relay refuses it
    DELETE /routes/RELAY/NAME  remove a route (404 when there is none)
    POST /routes/reset       drop every runtime route change

POST, PUT and DELETE need ``Authorization: Bearer <admin.token>``, and are refused when no
token is set."""

from __future__ import annotations

import logging
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer

import orjson
from prometheus_client import CollectorRegistry

from pystatsd import __version__
from pystatsd.admin_auth import TokenGuard
from pystatsd.admin_control import AdminControl
from pystatsd.bounded_server import BoundedServerMixin, ServingThread
from pystatsd.metrics_exposition import CONTENT_TYPE_LATEST, metrics_registry, render
from pystatsd.route_overlay import RouteError

MAX_BODY = 65536

log = logging.getLogger("pystatsd.admin")


class _Server(BoundedServerMixin, HTTPServer):
    refusal = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\n"
               b"Connection: close\r\n\r\ntoo many connections\n")

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int) -> None:
        self.init_bound(max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


def _handler(control: AdminControl, guard: TokenGuard, registry: CollectorRegistry,
             idle_timeout: float) -> type[BaseHTTPRequestHandler]:
    class AdminHandler(BaseHTTPRequestHandler):
        server_version = f"pystatsd/{__version__}"
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout  # StreamRequestHandler applies it to the connection

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http %s: " + format, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n")
            elif path == "/readyz":
                reasons = control.unready_reasons()
                if reasons:
                    body = "".join(f"{reason}\n" for reason in reasons).encode()
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, body)
                else:
                    self._send(HTTPStatus.OK, b"ready\n")
            elif path == "/status":
                self._send(HTTPStatus.OK, orjson.dumps(control.describe(),
                                                       option=orjson.OPT_INDENT_2) + b"\n",
                           "application/json")
            elif path == "/metrics":
                self._send(HTTPStatus.OK, render(registry), CONTENT_TYPE_LATEST)
            elif path == "/loglevel":
                self._send(HTTPStatus.OK, control.log_level().encode() + b"\n")
            elif path == "/routes":
                overlay = control.route_overlay
                routes: dict[str, list[dict[str, object]]] = {}
                for key, route, origin in overlay.listing():
                    routes.setdefault(key.split("/", 1)[0], []).append(
                        {**route, "origin": origin})
                self._json(HTTPStatus.OK, {"routes": routes, "overlay": overlay.describe()})
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n")

        do_HEAD = do_GET

        def _json(self, status: int, document: object) -> None:
            self._send(status, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n",
                       "application/json")

        def _authorized_body(self) -> bytes | None:
            """The request's body when it carries the token; else None, refusal sent."""
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY)) if length else b""
            authorization = self.headers.get("Authorization", "")
            presented = authorization[7:] if authorization.startswith("Bearer ") else None
            refused = guard.refusal(trusted=False, authorized=guard.accepts(presented))
            if refused:
                self._send(HTTPStatus.FORBIDDEN, refused.encode() + b"\n")
                return None
            return body

        def _route_key(self) -> str | None:
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if len(parts) == 3 and parts[0] == "routes":
                return f"{parts[1]}/{parts[2]}"
            self._send(HTTPStatus.NOT_FOUND, b"not found\n")
            return None

        def do_PUT(self) -> None:  # noqa: N802
            body = self._authorized_body()
            key = self._route_key() if body is not None else None
            if body is None or key is None:
                return
            try:
                route = orjson.loads(body)
                if not isinstance(route, dict):
                    raise RouteError("the body must be one JSON object: the route")
                control.route_overlay.put(key, route)
            except (orjson.JSONDecodeError, RouteError) as exc:
                self._send(HTTPStatus.BAD_REQUEST, f"{exc}\n".encode())
                return
            self._json(HTTPStatus.OK, {"route": key, "overlay": control.route_overlay.describe()})

        def do_DELETE(self) -> None:  # noqa: N802
            body = self._authorized_body()
            key = self._route_key() if body is not None else None
            if body is None or key is None:
                return
            try:
                if control.route_overlay.current(key)[2] is None:
                    self._send(HTTPStatus.NOT_FOUND, f"no route {key}\n".encode())
                    return
                control.route_overlay.put(key, None)
            except RouteError as exc:
                self._send(HTTPStatus.BAD_REQUEST, f"{exc}\n".encode())
                return
            self._json(HTTPStatus.OK, {"deleted": key})

        def do_POST(self) -> None:  # noqa: N802
            if self._authorized_body() is None:
                return
            path = self.path.split("?", 1)[0].rstrip("/")
            parts = path.split("/")
            try:
                if path == "/routes/reset":
                    self._json(HTTPStatus.OK, {"reset": control.route_overlay.reset()})
                elif len(parts) == 3 and parts[1] == "health":
                    control.set_health(parts[2])
                    self._send(HTTPStatus.OK, f"health: {control.health}\n".encode())
                elif len(parts) == 3 and parts[1] == "loglevel":
                    control.set_log_level(parts[2])
                    self._send(HTTPStatus.OK, f"loglevel: {control.log_level()}\n".encode())
                else:
                    self._send(HTTPStatus.NOT_FOUND, b"not found\n")
            except ValueError as exc:
                self._send(HTTPStatus.BAD_REQUEST, f"{exc}\n".encode())

    return AdminHandler


def http_admin(control: AdminControl, guard: TokenGuard, address: str, port: int,
               max_connections: int, timeout: float) -> ServingThread:
    registry = metrics_registry(control)
    server = _Server((address, port), _handler(control, guard, registry, timeout),
                     max_connections)
    return ServingThread(server, "admin-http")
