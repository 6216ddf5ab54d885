"""Where a process's resident memory is, by mapping: read from /proc/PID/smaps.

Kinds (anonymous mappings have no name, so each is told by its shape):

- ``heap``: ``[heap]``, glibc's main arena (the main thread's mallocs, grown by ``brk``);
- ``thread arenas``: glibc's per-thread arenas, a 64 MiB-aligned reservation of which only the
  part in use is read-write (an ``rw-p`` mapping followed by the ``---p`` rest of it);
- ``thread stacks``: an anonymous mapping right after a one-page ``---p`` guard;
- ``dontfork``: mappings the fork does not copy (``dc`` in VmFlags): the native receive's ring
  and its drain thread's stack;
- ``other anon``: pymalloc's 1 MiB arenas, mallocs large enough for their own mmap, and
  whatever the kernel merged with them;
- ``files``: the interpreter, shared libraries and extension modules (mostly shared, clean).

    python bench/rss_breakdown.py PID       # one table, MB resident (Rss) per kind
"""

from __future__ import annotations

import sys
from pathlib import Path

ARENA_ALIGN = 64 << 20


def _mappings(pid: int) -> list[dict]:
    maps: list[dict] = []
    current: dict | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            low, high = (int(part, 16) for part in head[0].split("-"))
            current = {"low": low, "high": high, "perms": head[1],
                       "name": head[5] if len(head) > 5 else "", "rss": 0, "flags": ""}
            maps.append(current)
        elif current is not None and head[0] == "Rss:":
            current["rss"] = int(head[1])
        elif current is not None and head[0] == "VmFlags:":
            current["flags"] = " ".join(head[1:])
    return maps


def breakdown(pid: int) -> dict[str, float]:
    """MB resident per kind (see the module's docstring), and ``total``."""
    maps = _mappings(pid)
    kinds: dict[str, float] = {"heap": 0.0, "thread arenas": 0.0, "thread stacks": 0.0,
                               "dontfork": 0.0, "other anon": 0.0, "files": 0.0}
    for index, entry in enumerate(maps):
        before = maps[index - 1] if index else None
        after = maps[index + 1] if index + 1 < len(maps) else None
        name = entry["name"]
        if name == "[heap]":
            kind = "heap"
        elif name.startswith("/"):
            kind = "files"
        elif name.startswith("["):
            kind = "thread stacks" if name == "[stack]" else "files"  # vdso, vvar
        elif " dc" in " " + entry["flags"]:
            kind = "dontfork"
        elif (entry["low"] % ARENA_ALIGN == 0 and after is not None
              and after["perms"].startswith("---") and after["low"] == entry["high"]
              and (after["high"] % ARENA_ALIGN == 0)):
            kind = "thread arenas"
        elif (before is not None and before["perms"].startswith("---")
              and before["high"] == entry["low"] and before["high"] - before["low"] <= 65536):
            kind = "thread stacks"
        else:
            kind = "other anon"
        kinds[kind] += entry["rss"] / 1024
    kinds["total"] = sum(kinds.values())
    return kinds


def main() -> None:
    for kind, mb in breakdown(int(sys.argv[1])).items():
        print(f"{kind:14} {mb:7.1f} MB")


if __name__ == "__main__":
    main()
