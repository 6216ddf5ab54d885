"""Where the daemon's own log goes: stderr (the journal under systemd), syslog, or a file."""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: dict[str, Any]) -> bool:
    """(Re)install the handler of the ``pystatsd`` logger from the config's ``logging``
    section. Called again on SIGUSR1 so a rotated log file is reopened.

    Build, then swap: when the new target cannot be opened (a removed directory, a file the
    user may not write), the handlers in place stay, the failure is logged through them, and
    False is returned. Logging must never be the reason the daemon stops."""
    logger = logging.getLogger("pystatsd")
    target = settings.get("target", "stderr")
    try:
        handler = _handler(target)
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


def _handler(target: str) -> logging.Handler:
    handler: logging.Handler
    if target == "stderr":
        handler = logging.StreamHandler()
    elif target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(address=address)
        handler.setFormatter(logging.Formatter("pystatsd[%(process)d]: %(levelname)s "
                                               "%(name)s: %(message)s"))
    else:
        handler = logging.handlers.WatchedFileHandler(target)
    if handler.formatter is None:
        handler.setFormatter(logging.Formatter(_FORMAT))
    return handler
