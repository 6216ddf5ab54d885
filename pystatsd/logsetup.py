"""Where the daemon's own log goes (stderr, which is the journal under systemd, syslog, or a
file), in which format (text lines, or JSON objects by python-json-logger), and at which level
(changeable at run time through the admin interfaces until the next reload or restart)."""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
_JSON_NAMES = {"asctime": "timestamp", "levelname": "level", "name": "logger"}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(settings: dict[str, Any]) -> bool:
    """(Re)install the handler of the ``pystatsd`` logger from the config's ``logging``
    section. Called again on SIGUSR1 so a rotated log file is reopened.

    Build, then swap: when the new target cannot be opened (a removed directory, a file the
    user may not write), the handlers in place stay, the failure is logged through them, and
    False is returned. Logging must never be the reason the daemon stops."""
    logger = logging.getLogger("pystatsd")
    target = settings.get("target", "stderr")
    try:
        handler = _handler(target, settings.get("format", "text"))
    except OSError as exc:
        logger.error("cannot log to %s: %s; logging stays where it was", target,
                     exc.strerror or exc)
        return False
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(settings.get("level", "INFO"))
    logger.propagate = False
    return True


def set_level(level: str) -> str:
    """Change the level of the ``pystatsd`` logger now; return the previous one. ``ValueError``
    for a level that is not one of :data:`LEVELS`."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    logger = logging.getLogger("pystatsd")
    previous = logging.getLevelName(logger.getEffectiveLevel())
    logger.setLevel(level)
    return previous


def current_level() -> str:
    return logging.getLevelName(logging.getLogger("pystatsd").getEffectiveLevel())


def _handler(target: str, form: str = "text") -> logging.Handler:
    handler: logging.Handler
    syslog_prefix = ""
    if target == "stderr":
        handler = logging.StreamHandler()
    elif target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(address=address)
        syslog_prefix = f"pystatsd[{os.getpid()}]: "
        handler.setFormatter(logging.Formatter(syslog_prefix + "%(levelname)s "
                                               "%(name)s: %(message)s"))
    else:
        handler = logging.handlers.WatchedFileHandler(target)
    if form == "json":
        handler.setFormatter(JsonFormatter(_JSON_FIELDS, rename_fields=_JSON_NAMES,
                                           prefix=syslog_prefix))
    elif handler.formatter is None:
        handler.setFormatter(logging.Formatter(_FORMAT))
    return handler
