"""A small client that sends JSON datagrams to pystatsd.

It keeps the old agent's calls (``trace(name, info)``, ``guage(name, value, info)``) so existing
callers work unchanged, and adds ``counter``, ``gauge``, ``timer`` and ``set``. Agent tags are
merged by the daemon now. Sending never raises: metrics must not break the program that reports
them.

By default every metric carries a ``host`` tag, this machine's name, as the old agent's did: the
series its callers already have keep their identity, and the ``legacy`` Kafka event has no
other host field. That tag makes the client's series distinct from the same metric sent without
it (``nc``, a statsd library): ``api.hits,env=stage,host=web1`` is not ``api.hits,env=stage``.
``add_host=False`` sends only the caller's tags."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

import orjson

log = logging.getLogger("pystatsd.client")

Info = Mapping[str, Any] | None


class StatsClient:
    """Sends one JSON datagram per call to ``host:port`` over UDP.

    ``add_host``: tag every metric with ``host=<socket.gethostname()>`` (the old agent's
    behaviour, the default); a ``host`` in a call's own tags wins over it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5090, *,
                 add_host: bool = True) -> None:
        self.address = (host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._hostname = socket.gethostname() if add_host else None
        self.send_errors = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> StatsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the old agent's calls ----------------------------------------------------------
    def trace(self, metric_name: str, trace_info: Info = None) -> None:
        """Count one event of ``metric_name`` with the tags in ``trace_info``."""
        self._send(metric_name, "trace", None, trace_info)

    def guage(self, metric_name: str, value: float, trace_info: Info = None) -> None:
        """The old agent's spelling of :meth:`gauge`."""
        self.gauge(metric_name, value, trace_info)

    # -- the rest ---------------------------------------------------------------------------
    def counter(self, metric_name: str, value: float = 1, tags: Info = None,
                sample_rate: float = 1.0) -> None:
        self._send(metric_name, "counter", value, tags, sample_rate)

    def gauge(self, metric_name: str, value: float, tags: Info = None) -> None:
        self._send(metric_name, "gauge", value, tags)

    def timer(self, metric_name: str, milliseconds: float, tags: Info = None,
              sample_rate: float = 1.0) -> None:
        self._send(metric_name, "timer", milliseconds, tags, sample_rate)

    def set(self, metric_name: str, member: str | int, tags: Info = None) -> None:
        self._send(metric_name, "set", member, tags)

    def _send(self, name: str, metric_type: str, value: Any, tags: Info,
              sample_rate: float = 1.0) -> None:
        message: dict[str, Any] = {}
        if self._hostname is not None:
            message["host"] = self._hostname
        message.update(tags or {})
        message["metric_name"] = name
        message["metric_type"] = metric_type
        if value is not None:
            message["value"] = value
        if sample_rate != 1.0:
            message["sample_rate"] = sample_rate
        try:
            self._sock.sendto(orjson.dumps(message), self.address)
        except OSError as exc:
            self.send_errors += 1
            log.debug("metric %s not sent: %s", name, exc)


PystatAgent = StatsClient
"""The old client's class name."""
