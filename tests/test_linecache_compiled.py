"""The compiled line cache (pystatsd/_linecache.pyx) against its reference, the pure-Python
PythonLineCache: on any bytes, both take the same lines, refuse the same lines and leave the
same cells, which are the cells the decoders and MetricMgr.add leave; and the daemon runs the
compiled one unless told not to, or unless it is not built."""

from __future__ import annotations

import math
import os
import pickle
import struct
import subprocess
import sys
from array import array
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pystatsd import aggregation, distribution
from pystatsd.aggregation import MetricMgr, PythonLineCache
from pystatsd.config import build_config
from pystatsd.decoders import DecodeError, parse_statsd_line
from pystatsd.distribution import Distribution
from pystatsd.ingest import Pipeline
from pystatsd.selfstats import SelfStats
from pystatsd.workers import gauge_order
from pystatsd.workers.gauge_order import TimedGauge, TimedMetricMgr
from tests.conftest import REPO
from tests.line_caches import CompiledLineCache, MemberSet, pipelines_using

needs_compiled = pytest.mark.skipif(CompiledLineCache is None,
                                    reason="the compiled line cache is not built")


def test_the_compiled_line_cache_is_built_and_runs_by_default() -> None:
    # setup_venv's editable install and the packages build it; a failed build installs
    # without it (the daemon then runs the reference), which this makes visible.
    assert CompiledLineCache is not None, (
        "pystatsd._linecache does not import: rebuild it (bash tools/setup_venv.sh, or "
        "pip install -v -e . to see why the compile failed)")
    if os.environ.get(aggregation.LINE_CACHE_ENV, "auto") in ("auto", "", "compiled"):
        assert aggregation.LineCache is CompiledLineCache
        assert aggregation.LINE_CACHE == "compiled"


# -- the same lines taken, the same cells, on any value --------------------------------------

def cell_state(cell: Any, width: bool = True) -> Any:
    """What a cell holds, comparable with == (-0.0 and 0.0 told apart, nan equal to nan);
    ``width``: with its samples' width (4 or 8 bytes)."""
    if isinstance(cell, Distribution):
        return ("distribution", [repr(v) for v in cell.values], cell.weighted, cell.count,
                cell.total, cell.sketch is not None, cell.values.itemsize if width else None)
    if isinstance(cell, dict | MemberSet):  # a set: its members' hashes, in no order
        return ("set", sorted(cell))
    if isinstance(cell, TimedGauge):  # a receive worker's: when each change came, too
        return [repr(v) for v in cell], [repr(v) for v in cell.record]
    return [repr(v) for v in cell]


def run_lines(line_cache: Any, lines: list[bytes], absolute: bool,
              manager_type: type[MetricMgr] = MetricMgr, times: list[int] | None = None,
              **config: Any) -> tuple[dict, list[bool], dict]:
    """The cells after ``lines`` (each the first of its shape decoded and remembered, as the
    pipeline does), which lines the cache took, and the manager's counts. ``line_cache``
    None: the decoder and ``add`` alone; ``times``: the millisecond each line's payload
    arrived, as a receive worker stamps it for its ``TimedMetricMgr``."""
    manager = manager_type(build_config({"forwarders": {}, **config}), SelfStats())
    cache = None if line_cache is None else line_cache(manager, absolute_gauges=absolute)
    taken = []
    for n, line in enumerate(lines):
        if times is not None:
            gauge_order._now[0] = times[n]
        missed = line if cache is None else cache.apply([line])
        taken.append(missed is None)
        if missed is not None:
            assert missed is line
            try:
                samples = parse_statsd_line(line, absolute)
            except DecodeError:
                continue
            for sample in samples:
                manager.add(sample)
            if cache is not None and len(samples) == 1 and samples[0].timestamp is None:
                cache.remember(line, samples[0])
    cells = {key: cell_state(cell) for key, cell in manager.swap().series.items()}
    return cells, taken, dict(manager.stats.counters)


def by_decoder(lines: list[bytes], absolute: bool, width: bool = True, **config: Any) -> dict:
    manager = MetricMgr(build_config({"forwarders": {}, **config}), SelfStats())
    for line in lines:
        try:
            samples = parse_statsd_line(line, absolute)
        except DecodeError:
            continue
        for sample in samples:
            manager.add(sample)
    return {key: cell_state(cell, width) for key, cell in manager.swap().series.items()}


def in_doubles(lines: list[bytes], absolute: bool, **config: Any) -> dict:
    """:func:`by_decoder` with the pure-Python reference's samples (an array('d'), its own
    append), not the compiled module's floats-while-exact: the same values, whatever the
    width. The other three paths all append through the compiled module's one function."""
    saved = (distribution.new_samples, distribution.append_sample, distribution.narrow_samples)
    distribution.new_samples, distribution.append_sample, distribution.narrow_samples = (
        distribution._new_doubles, distribution._append_double, distribution._keep_doubles)
    try:
        return by_decoder(lines, absolute, width=False, **config)
    finally:
        distribution.new_samples, distribution.append_sample, distribution.narrow_samples = saved


def without_width(cells: dict) -> dict:
    return {key: (state[:-1] + (None,) if state[0] == "distribution" else state)
            for key, state in cells.items()}


def assert_twins(lines: list[bytes], absolute: bool = False, **config: Any) -> list[bool]:
    reference = run_lines(PythonLineCache, lines, absolute, **config)
    compiled = run_lines(CompiledLineCache, lines, absolute, **config)
    assert compiled[1] == reference[1]  # the same lines taken and refused, one by one
    assert compiled[0] == reference[0]
    assert compiled[2] == reference[2]  # the same rejects (overflow, too_many_series)
    assert compiled[0] == by_decoder(lines, absolute, **config)
    assert without_width(compiled[0]) == in_doubles(lines, absolute, **config)
    return compiled[1]


SHAPES = [b"n:%s|c", b"n:%s|c|@0.5", b"n:%s|c|#k:v", b"g:%s|g", b"g:%s|g|#k:v", b"t:%s|ms",
          b"t:%s|ms|@0.5", b"h:%s|h", b"d:%s|d", b"s:%s|s", b"s:%s|s|#k:v", b"n:%s|c|@5e-324",
          b"t:%s|ms|@1e-200", b"x:%s|q", b"n:%s", b"n:%s|"]
SEEDS = [shape % (b"a" if b"|s" in shape else b"1") for shape in SHAPES]

GRAMMAR = st.from_regex(rb"\A[+-]?[0-9]{0,22}(\.[0-9]{0,22})?([eE][+-]?[0-9]{0,4})?\Z")
NUMBER_BYTES = st.text("0123456789.eE+-", max_size=30).map(str.encode)
SPECIAL = st.sampled_from([
    b"", b"nan", b"NaN", b"inf", b"-inf", b"+inf", b"infinity", b"1e308", b"1.7976931348623157e308",
    b"1.7976931348623159e308", b"1e309", b"-1e309", b"1e-400", b"4.9e-324", b"2e-324",
    b"9" * 300, b"9" * 301, b"9" * 400, b"0" * 400 + b"1", b"1" + b"0" * 308, b"1" * 15,
    b"1" * 16, b"9007199254740993", b"0.1", b"0.3", b"123456789012345", b"1234567890.12345",
    b"0.000000000000001", b"1" * 64, b"1" * 65, b"0." + b"1" * 62, b"0." + b"1" * 63,
    b"1_0", b" 1", b"1 ", b"0x10", b"1.2.3", b"+", b"-", b".", b"+.", b"-.5", b"5.", b"+-1",
    b"--1", b"1e", b"1e+", b"e5", b".e1", b"-0", b"+0", b"-0.0", b"00", b"007", b"\xd9\xa3",
    b"\xff\xfe", b"caf\xc3\xa9", b"\xed\xa0\x80", b"1\x00", b"1:2", b"1|2", b"1\n2", b"+1e308",
])
VALUES = st.one_of(GRAMMAR, NUMBER_BYTES, SPECIAL, st.binary(max_size=12),
                   st.floats().map(lambda f: repr(f).encode()),
                   st.integers(-10**20, 10**20).map(lambda i: str(i).encode()))


@needs_compiled
@pytest.mark.parametrize("absolute", [False, True], ids=["signed-gauges", "absolute-gauges"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(SHAPES), VALUES), min_size=1, max_size=40))
def test_the_compiled_cache_takes_and_refuses_what_the_reference_does(absolute: bool,
                                                                      lines: list) -> None:
    assert_twins(SEEDS + [shape % value for shape, value in lines] * 2, absolute,
                 timer_exact_samples=5)


TIMED_SHAPES = [b"g:%s|g", b"g:%s|g|#k:v", b"h:%s|g", b"n:%s|c"]


def run_timed(line_cache: Any, steps: list[tuple[int, bytes]], absolute: bool) -> tuple:
    """A receive worker's cells (timed gauges) after ``steps`` (the millisecond, the line)."""
    times, lines = [at for at, _ in steps], [line for _, line in steps]
    return run_lines(line_cache, lines, absolute, TimedMetricMgr, times)[:2]


@needs_compiled
@pytest.mark.parametrize("absolute", [False, True], ids=["signed-gauges", "absolute-gauges"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(TIMED_SHAPES),
                          st.one_of(VALUES, st.sampled_from([b"5", b"+1", b"-2.5", b"+0"]))),
                min_size=1, max_size=40))
def test_a_workers_gauge_changes_are_timed_alike_on_every_path(absolute: bool,
                                                               lines: list) -> None:
    # The cells and when each change came (a timed gauge's record, which orders gauges across
    # workers) as the slow path leaves them, whichever line cache takes the lines.
    steps, at = [], 1000
    for advance, shape, value in lines * 2:  # twice: the second time the caches know them
        at += advance
        steps.append((at, shape % value))
    by_decoder = run_timed(None, steps, absolute)[0]
    reference, reference_taken = run_timed(PythonLineCache, steps, absolute)
    compiled, compiled_taken = run_timed(CompiledLineCache, steps, absolute)
    assert compiled_taken == reference_taken
    assert compiled == reference == by_decoder


@needs_compiled
@pytest.mark.parametrize("line_cache", [PythonLineCache, CompiledLineCache],
                         ids=["python", "compiled"])
def test_the_cache_takes_a_workers_gauge_lines_and_notes_when_each_came(line_cache: Any) -> None:
    steps = [(1, b"g:5|g"), (1, b"g:+1|g"), (2, b"g:+2|g"), (2, b"g:-1|g"), (3, b"g:7|g"),
             (4, b"g:+3|g"), (4, b"g:+3|g"), (6, b"g:-0.5|g")]
    cells, taken = run_timed(line_cache, steps, absolute=False)
    assert taken == [False] + [True] * 7  # all but the first on the cache's own gauge arm
    # 7 set at 3 ms, then +6 at 4 ms (one step) and -0.5 at 6; what came before 7 is gone
    assert cells == {("g", "gauge", ()): (["7.0", "5.5"], ["3", "4", "6.0", "6", "-0.5"])}


@needs_compiled
def test_odd_values_are_refused_by_both_and_the_usual_ones_taken() -> None:
    odd = [b"nan", b"inf", b"1e309", b"9" * 301, b"1_0", b" 1", b"0x10", b"", b"+", b"1e",
           b"\xff"]
    usual = [b"1", b"-2", b"+3", b"2.5", b".5", b"5.", b"1e3", b"1E-2", b"-0", b"9" * 300,
             b"0." + b"1" * 70, b"12345678901234567890"]
    lines = [b"n:1|c", b"t:1|ms", b"s:a|s"]
    lines += [b"n:%s|c" % value for value in odd + usual]
    lines += [b"t:%s|ms" % value for value in odd + usual]
    lines += [b"s:\xff\xfe|s", b"s:|s", b"s:caf\xc3\xa9|s", b"s:1.0|s"]
    taken = assert_twins(lines)
    assert taken[3:] == ([False] * len(odd) + [True] * len(usual)) * 2 + [
        False, False, True, True]


@needs_compiled
def test_both_reject_the_same_overflows_and_the_same_new_series_past_max_series() -> None:
    lines = [b"hits:1|c", b"hits:1e308|c", b"hits:1e308|c", b"load:1|g", b"load:+1e308|g",
             b"load:+1e308|g", b"db:1|ms", b"db:1e200|ms", b"db:-1e101|ms", b"db:5|ms",
             b"u:a|s", b"v:1|c", b"w:1|c"] * 3
    assert_twins(lines, max_series=4)


@needs_compiled
def test_the_compiled_cache_folds_timers_and_rebinds_cells_each_interval() -> None:
    config = build_config({"forwarders": {}, "timer_exact_samples": 10})
    states = []
    for line_cache in (PythonLineCache, CompiledLineCache):
        manager = MetricMgr(config, SelfStats())
        cache = line_cache(manager)
        seed = b"db:0|ms"
        cache.apply([seed])
        cache.remember(seed, parse_statsd_line(seed)[0])
        manager.add(parse_statsd_line(seed)[0])
        intervals = []
        for interval in range(3):
            assert cache.apply([b"db:%d|ms" % v for v in range(interval, 100, 3)]) is None
            intervals.append(cell_state(manager.swap().series[("db", "timer", ())]))
        states.append((intervals, cache.hits, len(cache)))
    assert states[0] == states[1]
    assert states[1][0][0][-1]  # past timer_exact_samples: a sketch


# -- which one runs --------------------------------------------------------------------------

def version_with(value: str | None, block_compiled: bool = False) -> subprocess.CompletedProcess:
    """``pystatsd --version`` with PYSTATSD_LINE_CACHE set to ``value``; ``block_compiled``:
    as where the extension is not built (its import fails)."""
    env = {k: v for k, v in os.environ.items() if k != aggregation.LINE_CACHE_ENV}
    if value is not None:
        env[aggregation.LINE_CACHE_ENV] = value
    code = "import sys\n"
    if block_compiled:
        code += "sys.modules['pystatsd._linecache'] = None\n"  # how a missing module imports
    code += "sys.argv = ['pystatsd', '--version']\nfrom pystatsd.cli import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)


@needs_compiled
def test_version_says_which_line_cache_runs_and_the_switch_forces_the_python_one() -> None:
    assert version_with(None).stdout.rstrip().endswith("; line cache: compiled)")
    assert version_with("compiled").stdout.rstrip().endswith("; line cache: compiled)")
    forced = version_with("python")
    assert forced.returncode == 0
    assert forced.stdout.rstrip().endswith(
        "; line cache: python (PYSTATSD_LINE_CACHE=python))")


def test_without_the_compiled_module_the_python_one_runs_unless_compiled_is_required() -> None:
    fallback = version_with(None, block_compiled=True)
    assert fallback.returncode == 0
    assert "line cache: python (the compiled line cache does not import" in fallback.stdout
    required = version_with("compiled", block_compiled=True)
    assert required.returncode != 0
    assert required.stderr.rstrip().splitlines()[-1].startswith(
        "RuntimeError: PYSTATSD_LINE_CACHE=compiled but the compiled line cache does not import")
    bogus = version_with("fast")
    assert bogus.returncode != 0
    assert "PYSTATSD_LINE_CACHE='fast': expected python, compiled or auto" in bogus.stderr


@needs_compiled
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.one_of(st.tuples(st.sampled_from(SHAPES), VALUES),
                                   st.just((b"%s", b""))), max_size=8), max_size=6),
       st.booleans())
def test_both_walk_a_payload_as_the_pipeline_splits_it(payloads: list, trailing: bool) -> None:
    # Empty lines, a last newline or not, lines the cache refuses in the middle: the same count
    # taken and the same line handed back, payload after payload.
    results = []
    for line_cache in (PythonLineCache, CompiledLineCache):
        manager = MetricMgr(build_config({"forwarders": {}}), SelfStats())
        cache = line_cache(manager)
        for seed in SEEDS:
            try:
                cache.remember(seed, parse_statsd_line(seed)[0])
            except DecodeError:  # the shapes of no metric type: never remembered
                pass
        returned = []
        for lines in payloads:
            payload = b"\n".join(shape % value for shape, value in lines) + (
                b"\n" if trailing else b"")
            returned.append(cache.apply_payload(payload))
        results.append((returned, cache.hits, cache.unplaced,
                        {key: cell_state(cell) for key, cell in manager.swap().series.items()}))
    assert results[0] == results[1]


@needs_compiled
def test_a_cell_of_another_shape_is_an_error_not_a_crash() -> None:
    # The compiled loop indexes counter and gauge cells unchecked once bound: a change to the
    # cells' shape (new_cell) must fail loudly at binding, as the Python class would.
    class TupleCells(MetricMgr):
        def cell(self, key: Any) -> Any:
            return (0.0,)

    manager = TupleCells(build_config({"forwarders": {}}), SelfStats())
    cache = CompiledLineCache(manager)
    cache.remember(b"n:1|c", parse_statsd_line(b"n:1|c")[0])
    with pytest.raises(TypeError, match="counter cell is tuple"):
        cache.apply_payload(b"n:2|c")


@needs_compiled
def test_shapes_made_to_collide_are_aggregated_right_on_the_slow_path() -> None:
    # The compiled cache's shape hash does not resist names chosen to collide; its table
    # bounds the cost instead: a lookup gives up after 64 slots and the line is decoded as a
    # new one would be. 150 names whose hashes share their low 12 bits (found here, as a
    # client who knew the seed would) all want one slot of the table (<= 512 slots).
    from pystatsd._linecache import shape_hash

    names: list[bytes] = []
    candidate = 0
    target = shape_hash(b"collide0", b"c") & 0xFFF
    while len(names) < 150:
        name = b"collide%d" % candidate
        if shape_hash(name, b"c") & 0xFFF == target:
            names.append(name)
        candidate += 1
    payloads = [b"\n".join(b"%s:%d|c" % (name, n) for name in names) for n in range(1, 4)]
    config = build_config({"forwarders": {}})
    manager = MetricMgr(config)
    with pipelines_using(CompiledLineCache):
        pipeline = Pipeline(config, manager, SelfStats())
    for payload in payloads:
        pipeline.ingest(payload)
    assert 64 <= pipeline.cached_shapes < len(names)  # the rest were not remembered
    counts = {s.name: s.stats["count"] for s in manager.finish(manager.swap(), 1.0)}
    assert counts == {name.decode(): 6.0 for name in names}


# -- a timer's samples: 4 bytes while a float holds each exactly, 8 from the first that not ---

def fits_a_float(value: float) -> bool:
    """A finite double that a C float holds exactly (inf and nan take 8 bytes: no timer
    sample is either, the decoders refuse them)."""
    try:
        return math.isfinite(value) and struct.unpack("f", struct.pack("f", value))[0] == value
    except OverflowError:  # past a float's range
        return False


SAMPLE_VALUES = st.one_of(st.floats(width=32), st.floats(), st.integers(-2**25, 2**25).map(float),
                          st.sampled_from([0.1, 12.5, 2.0**24 + 1, 1e39, -0.0, 1e-46, 5e-324]))


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(st.lists(SAMPLE_VALUES, max_size=60), st.integers(0, 80))
def test_samples_stay_exact_and_take_4_bytes_until_one_does_not_fit_a_float(
        values: list[float], cap: int) -> None:
    from pystatsd._linecache import append_sample, new_samples

    samples = new_samples()
    for n, value in enumerate(values):
        append_sample(samples, value, cap)
        assert samples.itemsize == (4 if all(map(fits_a_float, values[:n + 1])) else 8)
    assert [repr(v) for v in samples] == [repr(v) for v in values]


@needs_compiled
def test_a_timers_array_never_grows_past_the_fold_and_a_fold_starts_it_at_4_bytes() -> None:
    from pystatsd._linecache import append_sample, new_samples

    samples = new_samples()
    empty = sys.getsizeof(samples)
    for value in range(1_001):
        append_sample(samples, float(value), 1_001)
    assert sys.getsizeof(samples) == empty + 1_001 * 4  # no room past the cap (1,229 before)
    uncapped = new_samples()
    for value in range(1_001):
        append_sample(uncapped, float(value), 0)
    assert sys.getsizeof(uncapped) > empty + 1_100 * 4
    config = build_config({"forwarders": {}, "timer_exact_samples": 3})
    manager = MetricMgr(config, SelfStats())
    cache = CompiledLineCache(manager)
    cache.remember(b"t:1|ms", parse_statsd_line(b"t:1|ms")[0])
    assert cache.apply([b"t:0.1|ms", b"t:2|ms", b"t:3|ms"]) is None
    cell = manager.current_series()[("t", "timer", ())]
    assert cell.values.itemsize == 8 and cell.values.tolist() == [0.1, 2.0, 3.0]
    assert cache.apply([b"t:4|ms"]) is None  # the fourth: folded, emptied, floats again
    assert cell.sketch is not None and cell.values.itemsize == 4 and len(cell.values) == 0
    assert cache.apply([b"t:5|ms"]) is None
    assert cell.values.tolist() == [5.0] and cell.values.itemsize == 4


@needs_compiled
@pytest.mark.parametrize("line_cache", [PythonLineCache, CompiledLineCache],
                         ids=["python", "compiled"])
def test_one_series_bound_by_two_shapes_widens_for_both(line_cache: Any) -> None:
    # Two shapes of one series hold the same array: widened in place, both see it.
    manager = MetricMgr(build_config({"forwarders": {}}), SelfStats())
    cache = line_cache(manager)
    for seed in (b"t:1|ms|#a:1,b:2", b"t:1|ms|#b:2,a:1"):
        cache.remember(seed, parse_statsd_line(seed)[0])
    assert cache.apply([b"t:1|ms|#a:1,b:2", b"t:2|ms|#b:2,a:1", b"t:0.3|ms|#a:1,b:2",
                        b"t:4|ms|#b:2,a:1", b"t:16777217|ms|#b:2,a:1"]) is None
    (cell,) = manager.current_series().values()
    assert cell.values.typecode == "d"
    assert cell.values.tolist() == [1.0, 2.0, 0.3, 4.0, 16777217.0]


@needs_compiled
def test_samples_exported_as_a_buffer_are_not_resized_under_it() -> None:
    from pystatsd._linecache import append_sample, new_samples

    samples = new_samples()
    with memoryview(samples):
        with pytest.raises(BufferError):
            append_sample(samples, 1.0)
        with pytest.raises(BufferError):
            append_sample(samples, 0.1)
    append_sample(samples, 0.1)
    assert samples.tolist() == [0.1]


@needs_compiled
def test_a_pickled_timer_comes_back_with_this_processs_samples_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A hot restart hands its table over pickled; the successor may keep the other width.
    doubles = Distribution()
    doubles.values = array("d", [1.0, 2.5])  # as a process keeping doubles made it
    again = pickle.loads(pickle.dumps(doubles))
    assert again.values.typecode == "f" and again.values.tolist() == [1.0, 2.5]
    distribution.append_sample(again.values, 0.1)
    assert again.values.tolist() == [1.0, 2.5, 0.1]
    floats = pickle.dumps(again)
    monkeypatch.setattr(distribution, "new_samples", distribution._new_doubles)
    monkeypatch.setattr(distribution, "extend_samples", distribution._extend_doubles)
    narrow = Distribution()
    narrow.values = array("f", [1.0, 2.5])
    again = pickle.loads(pickle.dumps(narrow))  # where only doubles are kept: doubles
    assert again.values.typecode == "d" and again.values.tolist() == [1.0, 2.5]
    assert pickle.loads(floats).values.tolist() == [1.0, 2.5, 0.1]


@needs_compiled
def test_merges_into_a_timers_floats_keep_every_value_exact() -> None:
    # A hot restart's hand-over and the global tier's partials extend a timer's samples.
    from pystatsd.global_tier.partial_state import SeriesMerge
    from pystatsd.hot_restart import _merge_distribution

    newer, older = Distribution(), Distribution()
    distribution.extend_samples(newer.values, [1.0, 2.0])
    distribution.extend_samples(older.values, [3.0, 0.1])  # widened: another kind of array
    _merge_distribution(newer, older, 0.01)
    assert newer.values.tolist() == [1.0, 2.0, 3.0, 0.1]
    merge = SeriesMerge("timer")
    merge.add({"values": [1.0, 0.1, 123.456]}, 0.0, "a", 1_000, 0.01)
    assert merge.distribution.values.tolist() == [1.0, 0.1, 123.456]
