"""What start-up will need from the machine, checked before it is needed.

``pystatsd --check-config`` validates the file against the schema, then (here) checks that
every path the daemon will write can be written: the log file and each forwarder's own paths
(:meth:`forwarders.Forwarder.needed_paths`: spools under ``state_dir``, output files). The
admin socket in ``state_dir`` is not checked: without it only ``--status`` goes unanswered,
which the daemon logs.
The packaged service runs as the ``pystatsd`` user, and a check run by root proves nothing for
that user: ``--as-user NAME`` runs the checks in a child process that has become that user.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import orjson

from forwarders import NeededPath, load_forwarder_class
from pystatsd.config import Config
from pystatsd.daemon import forwarder_context

__all__ = ["needed_paths", "check_paths", "check_paths_as"]


def needed_paths(config: Config) -> dict[str, NeededPath]:
    """Every path the daemon will write, by the key path that names it."""
    needed: dict[str, NeededPath] = {}
    target = config["logging"]["target"]
    if target not in ("stderr", "syslog"):
        needed["logging.target"] = NeededPath(Path(target), directory=False)
    context = forwarder_context(config, host="check-config")
    for name, section in config["forwarders"].items():
        cls = load_forwarder_class(section.get("type", name))
        for key, path in cls.needed_paths(name, section, context).items():
            needed[f"forwarders.{name}.{key}"] = path
    return needed


def check_paths(needed: dict[str, NeededPath]) -> list[str]:
    """One line per path this process could not create or write, naming its key."""
    return [f"{key}: {problem}" for key, need in needed.items()
            if (problem := _problem(need)) is not None]


def check_paths_as(user: str, needed: dict[str, NeededPath]) -> list[str]:
    """:func:`check_paths` as ``user`` (only root may do this): in a forked child that drops
    to the user's uid, gid and groups, so the kernel's own permission checks answer."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return [f"--as-user: no user {user!r}"]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, check, report, exit without cleanup
        try:
            os.close(read_end)
            os.initgroups(user, entry.pw_gid)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            answer = check_paths(needed)
        except BaseException as exc:  # reported by the parent, never raised in a fork
            answer = [f"--as-user: could not run the checks as {user!r}: {exc}"]
        try:
            os.write(write_end, orjson.dumps(answer))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        data = report.read()
    os.waitpid(pid, 0)
    if not data:
        return [f"--as-user: could not run the checks as {user!r} (must be root)"]
    problems: list[str] = orjson.loads(data)
    return [f"{line} (as user {user})" for line in problems]


def _problem(need: NeededPath) -> str | None:
    path = need.path
    try:
        exists = _exists(path)
        if exists:
            if need.directory and not path.is_dir():
                return f"{path} is not a directory"
            if not need.directory and path.is_dir():
                return f"{path} is a directory"
            wanted = os.W_OK | (os.X_OK if need.directory else 0)
            return None if os.access(path, wanted) else f"{path} is not writable{_owner(path)}"
        ancestor = path.parent
        while not _exists(ancestor):
            ancestor = ancestor.parent
    except PermissionError as exc:
        return f"{path} cannot be reached: {exc.filename} is not searchable"
    if not ancestor.is_dir():
        return f"{path} cannot be created: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {ancestor} is not writable{_owner(ancestor)}"
    return None


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; PermissionError (naming the path) when a parent may not be
    searched, which ``Path.exists`` would raise without saying which one."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        blocked = next((p for p in reversed(path.parents) if not os.access(p, os.X_OK)),
                       path.parent)
        raise PermissionError(13, "not searchable", str(blocked)) from None
    return True


def _owner(path: Path) -> str:
    info = path.stat()
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return f" (owner {owner}, mode {stat.filemode(info.st_mode)})"
