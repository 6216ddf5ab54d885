"""The forked snapshot: a child process finishes the interval, and what comes back is exactly
what finishing in process gives, carried gauges and traces included; when the child fails,
nothing changed and the daemon finishes in process, counted."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarders import AggregateForwarder, ForwarderContext
from forwarders import file as file_forwarder
from forwarders.file import FileForwarder
from forwarders.records import snapshot_records
from pystatsd import forked_snapshot
from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.daemon import Daemon
from pystatsd.ingest import Pipeline
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, METRIC_TYPES, SET, TIMER, TRACE, Sample
from pystatsd.snapshot import ETSY_TIMER_STATS, DeferredSnapshot, SeriesStats, Snapshot
from tests.line_caches import LINE_CACHES, pipelines_using


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Any:
    """A forked snapshot freezes the heap (``gc.freeze``); give pytest's back after each test."""
    yield
    gc.unfreeze()


REPO = Path(__file__).resolve().parent.parent
NAMES = st.sampled_from(["a", "b.c", "ünï"])
TAGS = st.sampled_from([(), (("env", "prod"),), (("env", "dev"), ("k", ""))])
RATES = st.sampled_from([1.0, 0.5, 0.1])
NUMBERS = st.one_of(st.integers(-1000, 1000).map(float),
                    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                    st.sampled_from([1e308, -1e308, 1e200]))  # overflow and non-finite results


@st.composite
def samples(draw: Any) -> Sample:
    kind = draw(st.sampled_from(METRIC_TYPES))
    value: float | str
    if kind == SET:
        value = draw(st.sampled_from(["u1", "u2", "u3", "x"]))
    elif kind == TRACE:
        value = 1.0
    else:
        value = draw(NUMBERS)
    rate = draw(RATES) if kind in (COUNTER, TIMER, HISTOGRAM, TRACE) else 1.0
    delta = kind == GAUGE and draw(st.booleans())
    return Sample(draw(NAMES), kind, value, rate, draw(TAGS), delta)


def twin_managers(**overrides: Any) -> tuple[MetricMgr, MetricMgr]:
    config = build_config({"forwarders": {}, **overrides})
    return MetricMgr(config), MetricMgr(config)


def comparable(series: list[Any]) -> list[tuple[Any, ...]]:
    # repr: equal floats print equal, and a NaN statistic would compare unequal to itself.
    return [(type(s), s.name, s.type, s.tags, repr(sorted(s.stats.items())), s.timestamp,
             repr(s.partial), repr(s.extra_stats)) for s in series]


def carried(manager: MetricMgr) -> tuple[dict[Any, list[float]], ...]:
    return manager.carried()


PARTIALS = {"global": {"kafka": {"kafka_topic": "p", "format": "partials",
                                  "kafka_broker": "127.0.0.1:1"}}}


@settings(max_examples=40, deadline=None)
@given(intervals=st.lists(st.lists(samples(), max_size=40), min_size=1, max_size=4),
       cumulative=st.booleans(), exact=st.sampled_from([3, 1000]), partials=st.booleans(),
       defer=st.booleans(), etsy=st.booleans())
def test_forked_finish_equals_in_process_finish_interval_after_interval(
        intervals: list[list[Sample]], cumulative: bool, exact: int, partials: bool,
        defer: bool, etsy: bool) -> None:
    extra = {"forwarders": PARTIALS["global"]} if partials else {}
    local, forked = twin_managers(trace_cumulative=cumulative, idle_expiry_intervals=2,
                                  timer_exact_samples=exact, **extra)
    if etsy:  # timers as ExtendedSeriesStats
        local.extra_stats = forked.extra_stats = frozenset({ETSY_TIMER_STATS})
    assert local.keep_partials == partials
    lock = threading.Lock()
    for interval in intervals:
        for sample in interval:
            assert local.add(sample) == forked.add(sample)
        expected = local.finish(local.swap(), 7.5)
        table = forked.swap()
        got = forked_snapshot.finish_forked(forked, table, 7.5, lock, defer=defer)
        if defer:  # the child's frames, made into objects when asked
            assert isinstance(got, forked_snapshot.SeriesFrames) and len(got) == len(expected)
            got = got.make()
        assert comparable(got) == comparable(expected)
        assert carried(forked) == carried(local)
        assert forked.stats.totals() == local.stats.totals()  # flush.non_finite among them


def test_carried_gauges_and_traces_survive_forked_flushes() -> None:
    _, manager = twin_managers(trace_cumulative=True, idle_expiry_intervals=3)
    lock = threading.Lock()
    manager.add(Sample("g", GAUGE, 5.0))
    manager.add(Sample("t", TRACE, 1.0, 0.5))

    def flush() -> dict[str, dict[str, float]]:
        got = forked_snapshot.finish_forked(manager, manager.swap(), 10.0, lock)
        return {s.name: s.stats for s in got}

    assert flush() == {"g": {"value": 5.0}, "t": {"count": 2.0}}
    assert flush() == {"g": {"value": 5.0}, "t": {"count": 2.0}}  # no sample: carried
    manager.add(Sample("g", GAUGE, 2.0, delta=True))
    manager.add(Sample("t", TRACE, 1.0))
    assert flush() == {"g": {"value": 7.0}, "t": {"count": 3.0}}  # the delta moves it
    assert flush() == {"g": {"value": 7.0}, "t": {"count": 3.0}}
    assert flush() == {"g": {"value": 7.0}, "t": {"count": 3.0}}
    assert flush() == {}  # idle for idle_expiry_intervals flushes: expired


def test_a_gauge_forgotten_after_the_fork_stays_forgotten() -> None:
    manager, _ = twin_managers()
    manager.add(Sample("g", GAUGE, 5.0))
    manager.add(Sample("h", GAUGE, 6.0))
    manager.finish(manager.swap(), 10.0)
    gauges, traces = manager.carried()
    child_gauges = {key: list(entry) for key, entry in gauges.items()}  # as a child makes them
    manager.forget([("g", GAUGE, ())])  # after the fork, in the parent
    manager.adopt_carried(child_gauges, dict(traces), marked_at_fork=set(), shrunk=False)
    assert manager.current(GAUGE) == {("h", GAUGE, ()): 6.0}
    assert {s.name for s in manager.finish(manager.swap(), 10.0)} == {"h"}


def dies(manager: MetricMgr, table: Any, seconds: float, fd: int, *_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sends_half(manager: MetricMgr, table: Any, seconds: float, fd: int, *_: Any) -> None:
    os.write(fd, forked_snapshot._HEADER.pack(0, 1000) + b"\x00" * 10)  # then exits 0


def sends_garbage(manager: MetricMgr, table: Any, seconds: float, fd: int, *_: Any) -> None:
    os.write(fd, forked_snapshot._HEADER.pack(0, 4) + b"\xff\xfe\xfd\xfc")


def hangs(manager: MetricMgr, table: Any, seconds: float, fd: int, *_: Any) -> None:
    time.sleep(3600)


@pytest.mark.parametrize("child", [dies, sends_half, sends_garbage, hangs])
def test_a_failed_child_changes_nothing(child: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    local, forked = twin_managers(trace_cumulative=True)
    for manager in (local, forked):
        manager.add(Sample("g", GAUGE, 5.0))
        manager.add(Sample("t", TRACE, 1.0))
        manager.finish(manager.swap(), 10.0)
        manager.add(Sample("g", GAUGE, 1.0, delta=True))
        manager.add(Sample("lat", TIMER, 3.0))
    monkeypatch.setattr(forked_snapshot, "_child_work", child)
    monkeypatch.setattr(forked_snapshot, "CHILD_TIMEOUT", 1.0)
    table = forked.swap()
    with pytest.raises(forked_snapshot.ForkedSnapshotError):
        forked_snapshot.finish_forked(forked, table, 10.0, threading.Lock())
    # The same table finished in process afterwards gives what it always would have.
    assert comparable(forked.finish(table, 10.0)) == comparable(local.finish(local.swap(), 10.0))
    assert carried(forked) == carried(local)


def test_the_daemon_counts_a_failed_fork_and_finishes_that_interval_in_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = Daemon(build_config({"forwarders": {}}))
    daemon.manager.add(Sample("hits", COUNTER, 4.0))
    monkeypatch.setattr(forked_snapshot, "_child_work", dies)
    series = daemon._finish(daemon.manager.swap(), 2.0)
    assert [(s.name, s.stats) for s in series] == [("hits", {"count": 4.0, "rate": 2.0})]
    assert daemon.stats.take()["flush.fork_failed"] == 1


def test_prepared_data_comes_back_whole_and_a_failing_hook_costs_only_its_own() -> None:
    _, manager = twin_managers()
    for i in range(3):
        manager.add(Sample(f"c{i}", COUNTER, float(i)))
    many = forked_snapshot.PREPARED_FRAME_ITEMS * 2 + 7  # three frames

    def encoded(series: list[Any]) -> list[Any]:
        return [(s.name, s.stats["count"]) for s in series] + [b"m%d" % i for i in range(many)]

    def broken(series: list[Any]) -> list[Any]:
        raise ValueError("cannot encode")

    preparation = forked_snapshot.Preparation({
        "encoded": encoded, "broken": broken, "none": lambda series: None,
        "unmarshalable": lambda series: [object()], "empty": lambda series: []})
    series = forked_snapshot.finish_forked(manager, manager.swap(), 10.0, threading.Lock(),
                                           preparation)
    assert [s.name for s in series] == ["c0", "c1", "c2"]
    assert preparation.results == {"encoded": encoded(series), "empty": []}
    assert set(preparation.failures) == {"broken", "unmarshalable"}
    assert "ValueError: cannot encode" in preparation.failures["broken"]


def test_a_child_that_dies_while_preparing_leaves_no_result_and_changes_nothing() -> None:
    local, forked = twin_managers()
    for manager in (local, forked):
        manager.add(Sample("g", GAUGE, 5.0))

    def dies_preparing(series: list[Any]) -> list[Any]:
        os.kill(os.getpid(), signal.SIGKILL)
        return []

    preparation = forked_snapshot.Preparation({"first": lambda series: [1, 2, 3],
                                               "second": dies_preparing})
    table = forked.swap()
    with pytest.raises(forked_snapshot.ForkedSnapshotError):
        forked_snapshot.finish_forked(forked, table, 10.0, threading.Lock(), preparation)
    assert preparation.results == {} and preparation.failures == {}
    assert comparable(forked.finish(table, 10.0)) == comparable(local.finish(local.swap(), 10.0))
    assert carried(forked) == carried(local)


class Preparing(AggregateForwarder):
    """A forwarder with ``prepare``, which fails while ``failing`` is set."""

    failing = False

    @classmethod
    def prepare(cls, section: Any, snapshot: Any) -> list[Any] | None:
        if cls.failing:
            raise RuntimeError("no encoder here")
        return [len(snapshot.series)]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sent: list[tuple[str, Any]] = []

    def send(self, snapshot: Any) -> None:
        self.sent.append(("send", len(snapshot.series)))

    def send_prepared(self, snapshot: Any, prepared: list[Any]) -> None:
        self.sent.append(("send_prepared", prepared))


def test_a_prepare_that_fails_in_the_child_is_counted_and_the_forwarder_sends_it_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Preparing, "failing", True)
    daemon = Daemon(build_config({"forwarders": {}, "self_metrics": {"enabled": False}}))
    daemon.pipeline = Pipeline(daemon.config, daemon.manager, daemon.stats, [])
    forwarder = Preparing("preparing", {}, ForwarderContext(state_dir=tmp_path))
    daemon.forwarders["preparing"] = forwarder
    forwarder.start()
    try:
        daemon.manager.add(Sample("hits", COUNTER, 4.0))
        daemon.flush()
    finally:
        forwarder.close(5)
    assert forwarder.sent == [("send", 1)]
    assert daemon.stats.take()["flush.prepare_failed"] == 1
    # Where the hook works, its result is what the forwarder is handed.
    monkeypatch.setattr(Preparing, "failing", False)
    forwarder = Preparing("preparing", {}, ForwarderContext(state_dir=tmp_path))
    daemon.forwarders["preparing"] = forwarder
    forwarder.start()
    try:
        daemon.manager.add(Sample("hits", COUNTER, 4.0))
        daemon.manager.add(Sample("misses", COUNTER, 1.0))
        daemon.flush()
    finally:
        forwarder.close(5)
    assert forwarder.sent == [("send_prepared", [2])]
    assert "flush.prepare_failed" not in daemon.stats.take()


class Keeping(Preparing):
    """A preparing forwarder that keeps each snapshot it is handed."""

    def send_prepared(self, snapshot: Any, prepared: list[Any]) -> None:
        self.sent.append(("send_prepared", snapshot))


def test_a_flush_every_forwarder_prepared_makes_no_series_in_the_daemon_until_one_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    real_make = forked_snapshot.make_series
    monkeypatch.setattr(forked_snapshot, "make_series",
                        lambda rows: made.append(len(rows)) or real_make(rows))
    daemon = Daemon(build_config({"forwarders": {}}))
    daemon.pipeline = Pipeline(daemon.config, daemon.manager, daemon.stats, [])
    forwarders = [Keeping(name, {}, ForwarderContext(state_dir=tmp_path)) for name in "ab"]
    for forwarder in forwarders:
        daemon.forwarders[forwarder.name] = forwarder
        forwarder.start()
    try:
        for i in range(forked_snapshot.FRAME_ITEMS + 3):  # two frames
            daemon.manager.add(Sample(f"hits{i}", COUNTER, float(i)))
        daemon.manager.add(Sample("lat", TIMER, 3.0))
        flushed = daemon.flush()
    finally:
        for forwarder in forwarders:
            forwarder.close(5)
    assert [kind for forwarder in forwarders for kind, _ in forwarder.sent] == \
        ["send_prepared"] * 2
    handed = forwarders[0].sent[0][1]
    assert handed is forwarders[1].sent[0][1] is flushed  # one snapshot for all, as before
    client = forked_snapshot.FRAME_ITEMS + 4
    own = flushed.series_from(client)  # the self-metrics, made in the daemon: no series made
    assert own and all(s.name.startswith("pystatsd.") for s in own)
    assert flushed.series_count == client + len(own) and made == []
    # Read, they are the interval's series, then the self-metrics: what send() would see.
    assert [s.name for s in flushed.series[:client]] == sorted(
        [f"hits{i}" for i in range(forked_snapshot.FRAME_ITEMS + 3)] + ["lat"])
    assert flushed.series[client:] == own and sum(made) == client
    assert flushed.series[0].stats == {"count": 0.0, "rate": 0.0}


def test_a_deferred_snapshot_makes_its_series_once_and_only_when_read() -> None:
    made: list[int] = []
    first = [SeriesStats(f"s{i}", COUNTER, (), {"count": 1.0}) for i in range(3)]
    tail = (SeriesStats("own", GAUGE, (), {"value": 2.0}),)

    def make() -> list[SeriesStats]:
        made.append(1)
        time.sleep(0.05)  # long enough for the other reader to arrive meanwhile
        return list(first)

    flush = DeferredSnapshot.of(10.0, 10.0, "h", 3, make, tail)
    assert isinstance(flush, Snapshot)
    assert flush.series_count == 4 and flush.series_from(3) == tail and made == []
    readers = [threading.Thread(target=lambda: flush.series) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert flush.series == (*first, *tail) and made == [1]
    assert flush.series_from(1) == (*first[1:], *tail) and flush.series_count == 4


@pytest.mark.parametrize("write_lines", [10_000, 2])  # 2: the writes' slices meet mid-flush
def test_the_file_forwarder_prepared_in_the_child_writes_what_its_send_writes(
        tmp_path: Path, write_lines: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_forwarder, "WRITE_LINES", write_lines)
    config = build_config({"forwarders": {"file": {"type": "file",
                                                   "path": str(tmp_path / "flushed.jsonl")}}})
    daemon = Daemon(config)
    daemon.pipeline = Pipeline(daemon.config, daemon.manager, daemon.stats, [])
    daemon.forwarders = {name: cls(name, section, ForwarderContext(state_dir=tmp_path))
                         for name, section in config["forwarders"].items()
                         for cls in [FileForwarder]}
    daemon.forwarders["file"].start()
    try:
        for payload in (b"web.hits:3|c|#env:prod\nweb.hits:1|c\nlat:12|ms\nlat:30|ms",
                        b"queue:40|g\nusers:alice|s\n_e{6,9}:deploy|v1 is out|#env:prod"):
            daemon._deliver(payload)
        flushed = daemon.flush()
    finally:
        daemon.forwarders["file"].close(5)
    assert isinstance(flushed, DeferredSnapshot) and flushed.events
    written = (tmp_path / "flushed.jsonl").read_bytes()
    # The records of the whole flush, in order (what the console prints, what send wrote).
    assert written == b"".join(orjson.dumps(record) + b"\n"
                               for record in snapshot_records(flushed))
    assert len(written.splitlines()) == flushed.series_count + 1  # and the event, last
    assert b'"kind":"event"' in written.splitlines()[-1]


def test_release_frees_every_cell() -> None:
    manager, _ = twin_managers()
    for i in range(5000):
        manager.add(Sample(f"s{i}", SET, "m"))
    table = manager.swap()
    forked_snapshot.release(table)
    assert len(table) == 0


class CheckingLock:
    """A lock that records, at each release, how many entries ``watched`` still had."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.watched: dict[Any, Any] = {}
        self.sizes: list[int] = []

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.sizes.append(len(self.watched))
        self._lock.release()


def test_the_replaced_carried_state_is_freed_after_the_lock_not_under_it() -> None:
    """The old carried gauges (25,000 at 100,000 series took 34-57 ms to free) are freed
    once the adoption has let the ingest lock go, and all of them."""
    manager, _ = twin_managers()
    lock = CheckingLock()
    for i in range(3000):
        manager.add(Sample(f"g{i}", GAUGE, 1.0))
    forked_snapshot.finish_forked(manager, manager.swap(), 10.0, lock)  # type: ignore[arg-type]
    lock.watched = old = manager.carried()[0]
    assert len(old) == 3000
    got = forked_snapshot.finish_forked(manager, manager.swap(), 10.0,
                                        lock)  # type: ignore[arg-type]
    assert {s.name for s in got} == {f"g{i}" for i in range(3000)}  # carried
    assert lock.sizes[-1] == 3000  # still whole when the adoption let the lock go
    assert old == {}  # then freed
    assert len(manager.carried()[0]) == 3000


@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_a_forked_flush_frees_the_samples_a_cache_entry_still_holds(line_cache: Any) -> None:
    """An idle timer or set keeps no samples or members after its flush: its line-cache
    entry still holds the finished cell until the series has a line again."""
    with pipelines_using(line_cache):
        config = build_config({"forwarders": {}})
        manager = MetricMgr(config)
        pipeline = Pipeline(config, manager, manager.stats)
        for i in range(50):
            pipeline.ingest(b"idle.timer:%d|ms\nidle.users:u%d|s" % (i, i))
    cells = dict(manager.current_series())
    assert {len(cell.values) if key[1] == TIMER else len(cell) for key, cell in cells.items()} \
        == {50}
    table = manager.swap()
    forked_snapshot.finish_forked(manager, table, 10.0, threading.Lock())
    forked_snapshot.release(table)
    for key, cell in cells.items():
        assert len(cell.values if key[1] == TIMER else cell) == 0, key


@pytest.mark.integration
def test_the_running_daemon_carries_a_gauge_across_forked_flushes(start_daemon: Any) -> None:
    daemon = start_daemon({"flush_interval": 1})
    daemon.send_udp(b"level:5|g\nhits:1|c")
    values: list[float] = []
    end = time.monotonic() + 20
    while time.monotonic() < end and len(values) < 3:
        values = [r["stats"]["value"] for r in daemon.records() if r["name"] == "level"]
        time.sleep(0.05)
    assert values[:3] == [5, 5, 5]
    daemon.send_udp(b"level:+2|g")
    while time.monotonic() < end and values[-1] != 7:
        values = [r["stats"]["value"] for r in daemon.records() if r["name"] == "level"]
        time.sleep(0.05)
    assert values[-1] == 7
    assert daemon.stop() == 0
    names = {r["name"] for r in daemon.records()}
    assert "pystatsd.flush.count" in names
    assert "pystatsd.flush.fork_failed" not in names  # every flush above was forked


CHILD_OUTLIVES = """
import os, sys, threading, time
from forwarders import AggregateForwarder, ForwarderContext
from forwarders import file as file_forwarder
from forwarders.file import FileForwarder
from forwarders.records import snapshot_records
from pystatsd import forked_snapshot
from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config

def hang(manager, table, seconds, fd, preparation):
    print(os.getpid(), flush=True)
    time.sleep(3600)

forked_snapshot._child_work = hang
manager = MetricMgr(build_config({"forwarders": {}}))
forked_snapshot.finish_forked(manager, manager.swap(), 10.0, threading.Lock())
"""


def test_a_snapshot_child_dies_with_a_killed_daemon() -> None:
    # Else it would keep the daemon's sockets (inherited) bound after the daemon is gone.
    daemon = subprocess.Popen([sys.executable, "-c", CHILD_OUTLIVES], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert daemon.stdout is not None
        child = int(daemon.stdout.readline())
        daemon.kill()
        daemon.wait(10)
        end = time.monotonic() + 10
        while time.monotonic() < end and Path(f"/proc/{child}").exists():
            if Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break  # dead, waiting for init to reap it
            time.sleep(0.05)
        else:
            assert not Path(f"/proc/{child}").exists(), "snapshot child outlived its daemon"
    finally:
        daemon.kill()
        daemon.wait(10)
        assert daemon.stdout is not None
        daemon.stdout.close()


@pytest.mark.slow  # waits out a timeout by design: out of the fast loop
def test_a_cycle_frozen_by_a_forked_flush_is_collected_at_the_next_full_collection(
        tmp_path, monkeypatch) -> None:
    """The forked snapshot freezes the heap after each flush; a reference cycle alive then and
    dead later must still be freed, by the daemon's periodic full collection (every few flushes
    here instead of the daemon's hundreds: each forked flush of this test process costs ~80 ms)."""
    import gc
    import weakref

    from pystatsd import daemon as daemon_module
    from pystatsd.config import build_config
    from pystatsd.daemon import Daemon

    config = build_config({"state_dir": str(tmp_path), "flush_interval": 3600,
                           "self_metrics": {"enabled": False},
                           "listeners": [{"protocol": "udp", "port": 0}]})
    monkeypatch.setattr(daemon_module, "FROZEN_COLLECTION_FLUSHES", 4)
    daemon = Daemon(config)
    daemon.start()
    try:
        class Node:
            pass

        node = Node()
        node.me = node  # a cycle: only the collector can free it
        alive = weakref.ref(node)
        daemon._deliver(b"cycle.test:1|c")
        daemon.flush()  # forked: freezes the heap, the cycle with it
        del node
        gc.collect()
        assert alive() is not None, "frozen: an ordinary collection does not see it"
        for _ in range(daemon_module.FROZEN_COLLECTION_FLUSHES):
            daemon.flush()
        assert alive() is None
        assert daemon.stats.counters["gc.full_collections"] == 1
    finally:
        daemon.stop()


def _thp_field(name: str) -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _huge_pages_possible() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _huge_pages_possible(), reason="no transparent huge pages here")
def test_heap_is_collapsed_into_huge_pages_so_the_fork_copies_few_page_tables() -> None:
    """fork() holds the GIL while the kernel copies the page tables; with the heap in 2 MiB
    pages there are 512 times fewer entries to copy. A sparse mapping (a thread's stack) is
    left alone, so the collapse does not fault in memory nobody uses."""
    heap = [str(i) * 3 for i in range(600_000)]  # ~50 MB of small objects in pymalloc arenas
    rss_before = _thp_field("Rss")
    huge_before = _thp_field("AnonHugePages")
    collapsed = forked_snapshot.collapse_heap()
    if collapsed == 0 and not forked_snapshot._collapse_works:
        pytest.skip("this kernel has no MADV_COLLAPSE")
    assert collapsed >= 16 << 20
    assert _thp_field("AnonHugePages") - huge_before >= 16 << 20
    assert _thp_field("Rss") - rss_before < max(collapsed // 10, 4 << 20)
    del heap
