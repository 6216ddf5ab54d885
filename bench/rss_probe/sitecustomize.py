"""bench/daemon_rss.py --probe: a thread in the daemon that, when ``$PYSTATSD_RSS_PROBE/request``
appears (its text a label), writes ``LABEL.txt`` there: glibc's ``malloc_info`` (every arena's
system and free bytes), CPython's ``sys._debugmallocstats()`` (pymalloc's arenas and pools) and,
when tracemalloc runs (``PYTHONTRACEMALLOC=1``), the Python heap's largest allocation sites.
Only on the benchmark's PYTHONPATH; nothing in pystatsd imports it."""

import ctypes
import os
import sys
import threading
import time

_DIR = os.environ.get("PYSTATSD_RSS_PROBE")


def _write(label: str) -> None:
    out = os.path.join(_DIR, label + ".txt")
    libc = ctypes.CDLL(None)
    libc.fdopen.restype = ctypes.c_void_p
    with open(out, "w") as handle:
        handle.write("== threads: " + ", ".join(t.name for t in threading.enumerate()) + "\n")
        handle.write("== malloc_info\n")
        handle.flush()
        stream = libc.fdopen(os.dup(handle.fileno()), b"a")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
    with open(out, "a") as handle:
        handle.write("== _debugmallocstats\n")
        handle.flush()
        saved = os.dup(2)
        os.dup2(handle.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    import tracemalloc

    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("lineno")
        with open(out, "a") as handle:
            handle.write(f"== tracemalloc: {sum(s.size for s in stats) / 1e6:.1f} MB traced\n")
            for stat in stats[:40]:
                handle.write(f"{stat.size / 1e6:8.2f} MB {stat.count:9d} "
                             f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}\n")


def _poll() -> None:
    request = os.path.join(_DIR, "request")
    while True:
        time.sleep(0.2)
        try:
            with open(request) as handle:
                label = handle.read().strip()
        except FileNotFoundError:
            continue
        try:
            _write(label)
        finally:
            os.unlink(request)


if _DIR:
    threading.Thread(target=_poll, name="rss-probe", daemon=True).start()
