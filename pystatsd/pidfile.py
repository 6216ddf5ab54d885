"""The ``pid_file`` option: for init systems that find a daemon by a file holding its pid."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class PidFileError(OSError):
    """The pid file names a live process, or cannot be written; the message says which."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class PidFile:
    """Claimed at start-up, removed at exit (only if it still holds this process's pid)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def claim(self, allow: int | None = None) -> None:
        """Write this process's pid; refuse when the file names another live process (a file
        left by a process that died is replaced)."""
        try:
            existing = int(self.path.read_text().strip() or "0")
        except FileNotFoundError:
            existing = 0
        except (OSError, ValueError):
            existing = 0  # unreadable or garbage: overwritten below, or the write says why
        if existing and existing not in (os.getpid(), allow) and _alive(existing):
            raise PidFileError(errno.EEXIST, f"pid_file {self.path}: pid {existing} is running")
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            temporary.write_text(f"{os.getpid()}\n")
            os.replace(temporary, self.path)  # readers never see a half-written file
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise PidFileError(exc.errno, f"pid_file {self.path}: {exc.strerror}") from exc

    def release(self) -> None:
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass
