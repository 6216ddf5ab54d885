"""Finishing an interval in a forked child, so that a flush never stalls receiving.

:meth:`MetricMgr.finish` is pure Python that needs the GIL: run in the daemon, it shares the GIL
with the receive thread, which then drains its socket slower than datagrams arrive (paced, it
keeps ~80% of its rate for the whole snapshot; a 100,000-series table takes seconds). Forked,
the way Redis saves, the child sees the finished table and the carried state as they were at
the fork (copy-on-write), runs the same ``finish`` unpaced on the other core, and sends back
the series and its new carried state as ``marshal`` frames over a pipe. The parent meanwhile
waits on the pipe (without the GIL), turns each frame into objects, pausing after each (or,
with ``defer``, keeps the series frames as bytes: :class:`SeriesFrames`), adopts the carried
state under the ingest lock, so the result is exactly the in-process one.

Forwarders stay in the parent (librdkafka's threads do not survive a fork), but the pure part of
their work can be done here: a :class:`Preparation` names a hook per forwarder (its
``prepare``, see ``forwarders.aggregate``) that the child runs on the finished series after
sending them, and carries its result back in frames of :data:`PREPARED_FRAME_ITEMS`, so the
parent only delivers it. The child runs no
thread, takes no lock, logs nothing, dies with the daemon (``PR_SET_PDEATHSIG``) and leaves by
``os._exit``. When ``fork`` is unavailable or fails, or the child dies, hangs past
:data:`CHILD_TIMEOUT`, or sends frames that do not decode or fewer than it announced,
:func:`finish_forked` raises :class:`ForkedSnapshotError` having changed nothing, and the daemon
finishes the same table in process (counted).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import gc
import marshal
import math
import os
import signal
import struct
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

from pystatsd.aggregation import (
    SNAPSHOT_PAUSE,
    SNAPSHOT_SLICE,
    IntervalTable,
    MetricMgr,
    SeriesKey,
    free_cell,
)
from pystatsd.snapshot import ExtendedSeriesStats, SeriesStats

AVAILABLE = hasattr(os, "fork")
"""Whether this platform can fork at all (else the daemon finishes in process)."""

FRAME_ITEMS = 500
"""Series (or carried entries) per frame: loading a frame and making its objects holds the GIL,
about a millisecond for 500 timer series."""

PREPARED_FRAME_ITEMS = 2000
"""Items of a forwarder's prepared data per frame: the parent only loads them (no objects of its
own to make), about half a millisecond of GIL for 2,000 Kafka messages."""

PARENT_PAUSE_RATIO = 4.0
"""After each frame the parent sleeps this many times as long as the frame took (at least
``SNAPSHOT_PAUSE``), so the receive thread keeps >= 80% of the GIL while a large snapshot comes
in: at a flat 2 ms pause per ~2 ms frame it kept about half, and at 100,000 series and 100k
datagrams/s the socket overflowed."""

CHILD_NICENESS = 10
"""The child yields the CPU to the receive thread: on a busy machine, at the same priority, the
scheduler left the receive thread waiting 15-60 ms at a time while the child ran."""

CHILD_TIMEOUT = 300.0
"""Seconds a child may take before it is killed and the interval is finished in process (a
100,000-series table took 4-37 s here, at nice 10 on a busy machine)."""

HUGE_PAGES = False
"""Whether to ask the kernel, before each fork, to back the dense parts of the heap with 2 MiB
pages (``madvise`` ``MADV_HUGEPAGE`` then ``MADV_COLLAPSE``, see :func:`collapse_heap`), so that
``fork()``, which holds the GIL while the kernel copies the page tables, copies one entry per
2 MiB instead of one per 4 KiB. ``fork()`` alone gets faster (bench/fork_cost.py, load ~10:
20.5 -> 1.3 ms at 100,000 series, 10.6 -> 2.9 ms at 10,000), but the receive thread does not:
in bench/flush_pause.py at 100,000 series and 100k datagrams/s (two runs each, order swapped,
load 1.2-1.9) the longest receive gap was 28.8-30.2 ms with the collapse and 17.4-21.4 ms
without, and the kernel dropped 28,629-64,282 datagrams during the flush with it, 0 without:
the collapse competes with the receive thread's page faults for the process's memory map.
Off until that is understood; nothing happens where THP is ``never`` or the kernel has no
``MADV_COLLAPSE`` (Linux < 6.1)."""

_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
_HUGE = 2 << 20
_DENSE = 0.9

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_PRCTL: Any
_MADVISE: Any
_MINCORE: Any
try:  # looked up in the daemon, not in the child
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PRCTL = _LIBC.prctl
    _MADVISE, _MINCORE = _LIBC.madvise, _LIBC.mincore
    _MADVISE.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _MINCORE.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
except (OSError, AttributeError):  # not Linux
    _PRCTL = _MADVISE = _MINCORE = None
_PR_SET_PDEATHSIG = 1
_collapse_works = True  # until the kernel says otherwise (EINVAL: no MADV_COLLAPSE)

_HEADER = struct.Struct("<BI")  # frame kind, payload length
_SERIES, _GAUGES, _TRACES, _MARKED, _END, _PREPARED, _PREPARED_END = range(7)
_CHILD_FAILED = 70


class ForkedSnapshotError(Exception):
    """The forked snapshot did not complete; nothing in the manager changed."""


_FIELDS = tuple(f.name for f in dataclasses.fields(SeriesStats))
assert _FIELDS == ("name", "type", "tags", "stats", "timestamp", "partial"), _FIELDS
_SETTERS = tuple(SeriesStats.__dict__[name].__set__ for name in _FIELDS)  # the slots' own
_NEW = object.__new__


def make_series(rows: list[tuple[Any, ...]]) -> list[SeriesStats]:
    """The series of the child's rows (``_FIELDS`` in order, then ``extra_stats``).

    Not through ``SeriesStats(...)``: a frozen dataclass's ``__init__`` stores each field with
    a Python-level ``object.__setattr__`` call, ~11,800 instructions a counter series
    (callgrind); here every series is made, and each field of every series set through its
    slot's own descriptor, by ``map`` in C: ~5,300. The objects are the same (the fast ==
    slow test of this module compares them with ``MetricMgr.finish``'s)."""
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    if columns[len(_FIELDS)].count(None) != len(rows):  # extra statistics: rare, the slow way
        return [SeriesStats(name, type_, tags, stats, stamp, partial) if extra is None else
                ExtendedSeriesStats(name, type_, tags, stats, stamp, partial, extra)
                for name, type_, tags, stats, stamp, partial, extra in rows]
    made = list(map(_NEW, repeat(SeriesStats, len(rows))))
    for setter, column in zip(_SETTERS, columns, strict=False):  # not extra_stats
        deque(map(setter, made, column), maxlen=0)
    return made


class SeriesFrames:
    """The finished series as the child sent them, ``marshal`` frames kept as bytes: made into
    objects only by :meth:`make`, when something reads them (see
    ``pystatsd.snapshot.DeferredSnapshot``). Keeping the bytes costs the parent a copy; loading
    and making the objects ~8,500 instructions a counter series."""

    def __init__(self, frames: list[bytes], count: int) -> None:
        self._frames = frames
        self.count = count

    def __len__(self) -> int:
        return self.count

    def make(self, pace: bool = False) -> list[SeriesStats]:
        """Every series, in order; ``pace``: sleeping after each frame as :func:`finish_forked`
        does, for the daemon's main thread (a forwarder's thread reads them unpaced)."""
        series: list[SeriesStats] = []
        clock = time.perf_counter
        for data in self._frames:
            began = clock()
            series.extend(make_series(marshal.loads(data)))
            if pace:
                time.sleep(max(SNAPSHOT_PAUSE, (clock() - began) * PARENT_PAUSE_RATIO))
        if len(series) != self.count:
            raise ValueError(f"snapshot child announced {self.count} series, sent "
                             f"{len(series)}")
        return series


Hook = Callable[[list[SeriesStats]], "list[Any] | None"]
"""Given the finished series, in the child: plain data ``marshal`` carries, or None."""


@dataclass
class Preparation:
    """Hooks to run in the child on the finished series, by forwarder name; what each returned
    (``results``) or why it raised (``failures``), filled in the parent. A hook that returns
    None has no result."""

    hooks: Mapping[str, Hook]
    results: dict[str, list[Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@overload
def finish_forked(manager: MetricMgr, table: IntervalTable, seconds: float,
                  lock: threading.Lock | threading.RLock,
                  preparation: Preparation | None = None,
                  defer: Literal[False] = False) -> list[SeriesStats]: ...


@overload
def finish_forked(manager: MetricMgr, table: IntervalTable, seconds: float,
                  lock: threading.Lock | threading.RLock,
                  preparation: Preparation | None = None, *,
                  defer: bool) -> list[SeriesStats] | SeriesFrames: ...


def finish_forked(manager: MetricMgr, table: IntervalTable, seconds: float,
                  lock: threading.Lock | threading.RLock,
                  preparation: Preparation | None = None,
                  defer: bool = False) -> list[SeriesStats] | SeriesFrames:
    """What ``manager.finish(table, seconds)`` returns, computed in a forked child; the
    manager's carried state is then the child's. ``lock`` is the ingest lock (held for the
    fork, so that no :meth:`MetricMgr.forget` is half done in the child's copy, and for the
    adoption). ``table`` is left as it was: the caller frees it (see :func:`release`).
    ``preparation``'s hooks run in the child after the series are sent, and its results are
    filled in (left empty when this raises). ``defer``: the series as the child's frames,
    made into objects only if asked (:class:`SeriesFrames`), for a flush whose forwarders
    all prepared."""
    manager.start_finish(len(table.series))
    if HUGE_PAGES:
        collapse_heap()
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    try:
        with lock:
            epoch = manager.epoch
            with warnings.catch_warnings():  # 3.12+: "multi-threaded, fork() may deadlock"
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise ForkedSnapshotError(f"fork failed: {exc}") from exc
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(manager, table, seconds, write_fd, parent, preparation)
    os.close(write_fd)
    # A child that hangs is killed: the pipe then ends short, and the interval falls back.
    watchdog = threading.Timer(CHILD_TIMEOUT, _kill, (pid,))
    watchdog.daemon = True
    watchdog.start()
    # The parent makes a few objects per series (``SeriesStats``, the carried entries). With
    # the collector on, that many new objects set off a full collection mid-snapshot, which
    # holds the GIL while it walks the whole heap (measured: 72 ms at 10,000 series); turned
    # back on after, the first young collection walks them all (200 ms at 100,000). So the
    # collector is off while they are made, and then everything alive is frozen (``gc.freeze``,
    # O(1), as the daemon does after start-up): the snapshot, the current table, the carried
    # state are all acyclic and freed by reference counting. The price: a reference cycle
    # alive at a flush that becomes garbage later is never collected.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with os.fdopen(read_fd, "rb", buffering=1 << 20) as pipe:
            series, gauges, traces, marked, non_finite, shrunk = _receive(pipe, defer)
            if preparation is not None:
                _receive_prepared(pipe, preparation)
        gc.freeze()
    except (ValueError, TypeError, EOFError) as exc:  # frames that do not decode
        _forget_results(preparation)
        raise ForkedSnapshotError(f"snapshot child sent a bad frame: {exc}") from exc
    except ForkedSnapshotError:
        _forget_results(preparation)
        raise
    finally:
        if collecting:
            gc.enable()
        status = _reap(pid)
        watchdog.cancel()
    if status != 0:
        _forget_results(preparation)
        raise ForkedSnapshotError(f"snapshot child ended with status {status:#x}")
    with lock:
        replaced = manager.carried()
        manager.adopt_carried(gauges, traces, marked if manager.epoch != epoch else None,
                              shrunk)
    manager.report_non_finite(non_finite)
    # The replaced state is freed after the lock, paced: freed in the adoption, it held the
    # lock and the GIL 34-57 ms at 100,000 series (bench/flush_pause.py, load 7-11).
    for carried in replaced:
        release_dict(carried)
    return series


def collapse_heap() -> int:
    """Back the heap with huge pages where the kernel can (see :data:`HUGE_PAGES`); the bytes
    now in huge-page ranges. Ranges already collapsed cost the kernel a check; pages split by
    copy-on-write during the last flush's child, or new since, are collapsed again."""
    global _collapse_works
    if _MADVISE is None or not _collapse_works:
        return 0
    done = 0
    for low, high in dense_heap_ranges():
        if _MADVISE(low, high - low, _MADV_HUGEPAGE) != 0:
            continue
        if _MADVISE(low, high - low, _MADV_COLLAPSE) == 0:
            done += high - low
        elif ctypes.get_errno() == errno.EINVAL:  # no MADV_COLLAPSE, or THP "never"
            _collapse_works = False
            break
    return done


def dense_heap_ranges() -> list[tuple[int, int]]:
    """Runs of whole 2 MiB pages, in the private writable anonymous mappings (Python's arenas,
    the brk heap), that are at least :data:`_DENSE` resident (``mincore``, without the GIL):
    collapsing a sparse one (a thread's stack, a fresh arena) would fault in memory nobody
    uses. /proc/self/maps, not smaps: smaps walks every page table and its text is long."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    ranges: list[tuple[int, int]] = []
    per_huge = _HUGE // _PAGE
    may_lack = per_huge - int(per_huge * _DENSE)  # absent 4 KiB pages in a dense 2 MiB one
    for line in maps.splitlines():
        fields = line.split()
        if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
            continue
        low, high = (int(end, 16) for end in fields[0].split("-"))
        low, high = (low + _HUGE - 1) & ~(_HUGE - 1), high & ~(_HUGE - 1)
        if high <= low:
            continue
        resident = ctypes.create_string_buffer((high - low) // _PAGE)
        if _MINCORE(low, high - low, resident) != 0:
            continue
        pages = resident.raw
        run_start = None
        for at in range(0, len(pages), per_huge):
            dense = pages.count(0, at, at + per_huge) <= may_lack
            if dense and run_start is None:
                run_start = at
            elif not dense and run_start is not None:
                ranges.append((low + run_start * _PAGE, low + at * _PAGE))
                run_start = None
        if run_start is not None:
            ranges.append((low + run_start * _PAGE, high))
    return ranges


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended just now
        pass


def _reap(pid: int) -> int:
    """The child's exit status; 0 if something else already reaped it (the frames were checked
    complete by then, and a child that died early shows as a short pipe)."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def _forget_results(preparation: Preparation | None) -> None:
    """A failed child's results, even those that came whole, are not used: the interval is
    finished in process and every forwarder sends it itself."""
    if preparation is not None:
        preparation.results.clear()
        preparation.failures.clear()


def _child(manager: MetricMgr, table: IntervalTable, seconds: float, fd: int,
           parent: int, preparation: Preparation | None) -> None:
    code = _CHILD_FAILED
    try:
        gc.disable()  # short-lived; a collection would only copy pages
        os.nice(CHILD_NICENESS)
        if _PRCTL is not None:  # a child outliving a killed daemon would hold its ports
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != parent:  # the daemon died before the line above
                return
        _child_work(manager, table, seconds, fd, preparation)
        code = 0
    finally:
        os._exit(code)


def _child_work(manager: MetricMgr, table: IntervalTable, seconds: float, fd: int,
                preparation: Preparation | None) -> None:
    """Finish the table and send every frame, then the prepared data (the tests replace this
    to kill the child)."""
    gauges, traces = manager.carried()
    marked = [key for key, entry in gauges.items() if entry[1] == math.inf]
    generation = manager.memory_generation
    series, non_finite = manager.finish_table(table, seconds, pace=False)
    shrunk = manager.memory_generation != generation
    gauges, traces = manager.carried()
    with os.fdopen(fd, "wb", buffering=1 << 20) as pipe:
        _send(pipe, _MARKED, marked)
        _send_chunks(pipe, _SERIES, [(s.name, s.type, s.tags, s.stats, s.timestamp, s.partial,
                                      s.extra_stats) for s in series])
        _send_chunks(pipe, _GAUGES, [(key, entry[0], entry[1]) for key, entry in gauges.items()])
        _send_chunks(pipe, _TRACES, [(key, entry[0], entry[1]) for key, entry in traces.items()])
        _send(pipe, _END, (len(series), len(gauges), len(traces), non_finite, shrunk))
        if preparation is not None:
            pipe.flush()  # the parent makes the series (unless deferred) while the hooks run
            _send_prepared(pipe, preparation.hooks, series)


def _send_prepared(pipe: BinaryIO, hooks: Mapping[str, Hook], series: list[SeriesStats]) -> None:
    """Each hook's result in frames, then one frame with each result's length and each
    failure; a result that ``marshal`` cannot carry is a failure (its frames sent before are
    dropped by the parent)."""
    lengths: dict[str, int] = {}
    failures: dict[str, str] = {}
    for name, hook in hooks.items():
        try:
            items = hook(series)
            if items is None:
                continue
            for at in range(0, len(items), PREPARED_FRAME_ITEMS):
                _send(pipe, _PREPARED, (name, items[at:at + PREPARED_FRAME_ITEMS]))
        except Exception as exc:  # one forwarder's hook must not cost the others theirs
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        lengths[name] = len(items)
    _send(pipe, _PREPARED_END, (lengths, failures))


def _send_chunks(pipe: BinaryIO, kind: int, items: list[Any]) -> None:
    for at in range(0, len(items), FRAME_ITEMS):
        _send(pipe, kind, items[at:at + FRAME_ITEMS])


def _send(pipe: BinaryIO, kind: int, payload: Any) -> None:
    data = marshal.dumps(payload)
    pipe.write(_HEADER.pack(kind, len(data)))
    pipe.write(data)


def _read_frame(pipe: BinaryIO, worked: float) -> tuple[int, bytes]:
    """The next frame's kind and payload; first, after a frame that took ``worked`` seconds
    to load, the receive thread's share of the GIL."""
    header = pipe.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise ForkedSnapshotError("snapshot child closed its pipe before the end")
    kind, size = _HEADER.unpack(header)
    data = pipe.read(size)
    if len(data) < size:
        raise ForkedSnapshotError("snapshot child closed its pipe mid-frame")
    if worked:
        time.sleep(max(SNAPSHOT_PAUSE, worked * PARENT_PAUSE_RATIO))
    return kind, data


def _receive(pipe: BinaryIO, defer: bool = False) -> tuple[
        list[SeriesStats] | SeriesFrames, dict[SeriesKey, list[float]],
        dict[SeriesKey, list[float]], set[SeriesKey], int, bool]:
    series: list[SeriesStats] = []
    frames: list[bytes] = []
    carried: tuple[dict[SeriesKey, list[float]], dict[SeriesKey, list[float]]] = ({}, {})
    marked: set[SeriesKey] = set()
    clock = time.perf_counter
    worked = 0.0
    while True:
        kind, data = _read_frame(pipe, worked)
        began = clock()
        if kind == _SERIES and defer:
            frames.append(data)
            worked = 0.0  # nothing loaded: no pause owed
            continue
        items = marshal.loads(data)
        if kind == _SERIES:
            series.extend(make_series(items))
        elif kind == _GAUGES or kind == _TRACES:
            target = carried[kind - _GAUGES]
            for key, value, idle in items:
                target[key] = [value, idle]
        elif kind == _MARKED:
            marked.update(items)
        else:
            count = int(items[0])
            if defer:  # every frame but the last is full; the objects count themselves later
                if len(frames) != -(-count // FRAME_ITEMS):
                    raise ForkedSnapshotError(f"snapshot child announced {count} series, sent "
                                              f"{len(frames)} frames")
            sent = (count if defer else len(series), len(carried[0]), len(carried[1]))
            if tuple(items[:3]) != sent:
                raise ForkedSnapshotError(f"snapshot child announced {items[:3]}, sent {sent}")
            finished: list[SeriesStats] | SeriesFrames = (SeriesFrames(frames, count) if defer
                                                          else series)
            return finished, carried[0], carried[1], marked, int(items[3]), bool(items[4])
        worked = clock() - began


def _receive_prepared(pipe: BinaryIO, preparation: Preparation) -> None:
    """The prepared frames, paced like the series: after each frame's load, the receive
    thread gets four times as long."""
    results: dict[str, list[Any]] = {}
    worked = 0.0
    while True:
        kind, data = _read_frame(pipe, worked)
        began = time.perf_counter()
        if kind == _PREPARED:
            name, items = marshal.loads(data)
            results.setdefault(name, []).extend(items)
        elif kind == _PREPARED_END:
            lengths, failures = marshal.loads(data)
            for name, length in lengths.items():
                got = results.get(name, [])
                if len(got) != length:
                    raise ForkedSnapshotError(f"snapshot child announced {length} prepared "
                                              f"items for {name}, sent {len(got)}")
                preparation.results[name] = got
            preparation.failures.update(failures)
            return
        else:
            raise ForkedSnapshotError(f"snapshot child sent frame kind {kind} among the "
                                      "prepared ones")
        worked = time.perf_counter() - began


def release_dict(entries: dict[Any, Any]) -> None:
    """Empty a dict a little at a time (:func:`release`'s pacing), so that freeing its keys
    and values never holds the GIL for long: the carried state replaced at a flush."""
    clock = time.perf_counter
    while entries:
        slice_end = clock() + SNAPSHOT_SLICE
        while entries and clock() < slice_end:
            for _ in range(min(256, len(entries))):
                entries.popitem()
        if entries:
            time.sleep(SNAPSHOT_PAUSE)


def release(table: IntervalTable) -> None:
    """Free a finished table a little at a time (freeing 100,000 cells at once holds the GIL
    for tens of milliseconds: a set of 1,000 members alone takes ~20 us), the samples and
    members of a cell a line-cache entry still holds included (:func:`free_cell`)."""
    series = table.series
    clock = time.perf_counter
    while series:
        slice_end = clock() + SNAPSHOT_SLICE
        while series and clock() < slice_end:
            for _ in range(min(64, len(series))):
                key, cell = series.popitem()
                free_cell(key[1], cell)
        if series:
            time.sleep(SNAPSHOT_PAUSE)
