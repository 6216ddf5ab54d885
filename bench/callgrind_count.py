"""The instruction count that bench/ingest_cpu.py and bench/graphite_ingest.py measure: a bench
script runs itself again under ``valgrind --tool=callgrind``, warms up, then puts its measured
payloads through ``itertools.starmap``, and callgrind counts only inside its C ``next``
(``--toggle-collect=starmap_next``). Not ``map``: the toggle also fires in every other ``map``,
and the warm-up runs ``map`` itself (each line decoded on the slow path calls
``Sample._replace``, which namedtuple writes with ``map``): with 10,000 names that counted
~20M instructions of warm-up, ~200 a line on a 100,000-line window. Unlike the clock, that
count repeats on a shared machine; address randomisation is off (``setarch -R``) and the hash
seed fixed, so that the allocator's and the dicts' work repeats too.

Counted code may fork (a flush's snapshot child): each process then reports its own count,
and the child's can come first. :func:`instructions_in_map` takes the process it started (the
one that ran the measured code), or with ``processes="all"`` the sum over it and its forked
children, and says which by its argument, never by the order of the reports.

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
from itertools import starmap


def warm_then_map(run: Callable[[bytes], object], payloads: Sequence[bytes], warm: int) -> None:
    """The workload callgrind counts: ``run`` each of the first ``warm`` payloads, then the
    rest through ``starmap``, which must be the only ``starmap`` in the program (callgrind
    toggles counting at each entry and exit of its ``next``, nested or not)."""
    for payload in payloads[:warm]:
        run(payload)
    deque(starmap(run, zip(payloads[warm:])), maxlen=0)


def instructions_in_map(script: str, arguments: Sequence[str],
                        processes: str = "started") -> int:
    """Instructions callgrind counts inside ``starmap`` while this Python runs ``script
    arguments`` (which must call :func:`warm_then_map` once, and nothing else through
    ``starmap``). The environment is passed on, so a switch set in ``os.environ`` (such as
    ``PYSTATSD_LINE_CACHE``) reaches the counted run."""
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R",
             "valgrind", "--tool=callgrind", "--toggle-collect=starmap_next",
             f"--callgrind-out-file={workdir}/out", sys.executable, script, *arguments],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return collected(result.stderr, processes)


def collected(report: str, processes: str = "started") -> int:
    """The instructions in callgrind's ``report`` (its stderr): of the process it started
    (``"started"``: the first to say anything, at start, before any fork) or summed over
    that one and every child it forked (``"all"``)."""
    counts = {int(pid): int(count)
              for pid, count in re.findall(r"==(\d+)== Collected : (\d+)", report)}
    first = re.search(r"==(\d+)==", report)
    if first is None or int(first.group(1)) not in counts:
        raise SystemExit("no 'Collected' line from callgrind:\n" + report[-2000:])
    if processes == "all":
        return sum(counts.values())
    if processes != "started":
        raise ValueError(f"processes: 'started' or 'all', not {processes!r}")
    return counts[int(first.group(1))]
