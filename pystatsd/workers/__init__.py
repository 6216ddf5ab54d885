"""Receive workers (``workers: N``): N processes receive and aggregate on the same UDP and TCP
ports (``SO_REUSEPORT``); at each flush the parent merges their partial tables exactly into
one snapshot and alone runs the forwarders. ``workers: 1`` (the default) starts none of this.

``pool``: the parent's side (sockets, processes, the flush round, restarts). ``worker``: one
worker process. ``merge``: the partials and their merge. ``gauge_order``: gauge cells that keep
the arrival times the merge orders them by. docs/scaling.md says what it guarantees."""

from __future__ import annotations

import os
from typing import Any


def worker_count(config: dict[str, Any]) -> int:
    """``workers``: a number, or ``auto`` for the CPUs this process may run on."""
    wanted = config.get("workers", 1)
    if wanted == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # not Linux
            return max(1, os.cpu_count() or 1)
    return int(wanted)
