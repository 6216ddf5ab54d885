"""Where the daemon's own log goes (stderr, which is the journal under systemd, syslog, or a
file), in which format (text lines, or JSON objects by python-json-logger), and at which level
(changeable at run time through the admin interfaces until the next reload or restart)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from typing import Any

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
        line = f"cannot log to {target}: {exc.strerror or exc}; logging stays where it was"
        logger.error("%s", line)
        if not any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None)
                   is sys.stderr for h in logger.handlers):
            print(f"pystatsd: {line}", file=sys.stderr)  # the old target may be gone too
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
        handler = _LogFileHandler(target)
    if form == "json":
        from pythonjsonlogger.json import JsonFormatter  # ~3 MB RSS: only when asked for

        handler.setFormatter(JsonFormatter(_JSON_FIELDS, rename_fields=_JSON_NAMES,
                                           prefix=syslog_prefix))
    elif handler.formatter is None:
        handler.setFormatter(logging.Formatter(_FORMAT))
    return handler


class _LogFileHandler(logging.handlers.WatchedFileHandler):
    """A log file that reopens itself after logrotate moves it, and whose write failures (a
    removed directory, a full disk) cost a line on stderr once a minute, not a traceback per
    record as the standard handler prints."""

    _REPORT_EVERY = 60.0

    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self._last_report = -self._REPORT_EVERY
        self._lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        # The standard handler reopens outside its own try: a removed directory would raise
        # into whichever thread logged, and kill it.
        try:
            self.reopenIfNeeded()
            if self.stream is None:
                self.stream = self._open()
        except Exception:
            self.handleError(record)
            return
        logging.FileHandler.emit(self, record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self._lost += 1
        now = time.monotonic()
        if now - self._last_report >= self._REPORT_EVERY:
            error = sys.exc_info()[1]
            print(f"pystatsd: cannot write the log file {self.baseFilename}: {error}; "
                  f"{self._lost} log lines lost so far", file=sys.stderr)
            self._last_report = now
