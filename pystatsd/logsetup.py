"""Where the daemon's own log goes: stderr (the journal under systemd), syslog, or a file."""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: dict[str, Any]) -> None:
    """(Re)install the handler of the ``pystatsd`` logger from the config's ``logging``
    section. Called again on SIGUSR1 so a rotated log file is reopened."""
    logger = logging.getLogger("pystatsd")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    target = settings.get("target", "stderr")
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
    logger.addHandler(handler)
    logger.setLevel(settings.get("level", "INFO"))
    logger.propagate = False
