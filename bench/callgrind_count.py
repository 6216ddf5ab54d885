"""The instruction count that bench/ingest_cpu.py and bench/graphite_ingest.py measure: a bench
script runs itself again under ``valgrind --tool=callgrind``, warms up, then puts its measured
payloads through ``map()``, and callgrind counts only inside ``map``'s C ``next``
(``--toggle-collect=map_next``). Unlike the clock, that count repeats on a shared machine;
address randomisation is off (``setarch -R``) and the hash seed fixed, so that the
allocator's and the dicts' work repeats too.

A script that measures an older tree (copied into it) needs this file beside it."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Sequence


def warm_then_map(run: Callable[[bytes], object], payloads: Sequence[bytes], warm: int) -> None:
    """The workload callgrind counts: ``run`` each of the first ``warm`` payloads, then the
    rest through ``map``, which must be the only ``map`` after start-up."""
    for payload in payloads[:warm]:
        run(payload)
    deque(map(run, payloads[warm:]), maxlen=0)


def instructions_in_map(script: str, arguments: Sequence[str]) -> int:
    """Instructions callgrind counts inside ``map`` while this Python runs ``script
    arguments`` (which must call :func:`warm_then_map` once, and nothing else through
    ``map``). The environment is passed on, so a switch set in ``os.environ`` (such as
    ``PYSTATSD_LINE_CACHE``) reaches the counted run."""
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R",
             "valgrind", "--tool=callgrind", "--toggle-collect=map_next",
             f"--callgrind-out-file={workdir}/out", sys.executable, script, *arguments],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit("no 'Collected' line from callgrind:\n" + result.stderr[-2000:])
    return int(found.group(1))
