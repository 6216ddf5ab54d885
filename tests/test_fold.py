"""A timer's fold into its DDSketch (``Distribution.fold``): the compiled fold
(pystatsd/_fold.pyx) and the pure-Python one (``fold_values_python``) leave exactly what the
ddsketch library's ``add`` per sample leaves — the same bins, offsets, key ranges, counts,
zero count, sum, extremes, so the same quantiles and the same protobuf bytes the partials
forwarder sends — and the daemon runs the compiled one unless told not to."""

from __future__ import annotations

import hashlib
import os
from array import array
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pystatsd import distribution
from pystatsd.distribution import Distribution, fold_values_python, new_sketch
from pystatsd.global_tier.partial_state import _protobuf

try:
    from pystatsd._fold import fold_values as compiled_fold
    from pystatsd._fold import squared_deviations, sum_min_max
except ImportError:  # not built: its tests skip, and the first test below fails
    compiled_fold = sum_min_max = squared_deviations = None

needs_compiled = pytest.mark.skipif(compiled_fold is None, reason="pystatsd._fold is not built")
FOLDS = [pytest.param(fold_values_python, id="python"),
         pytest.param(compiled_fold, id="compiled", marks=needs_compiled)]
ACCURACY = 0.01
QUANTILES = (0.0, 0.01, 0.5, 0.9, 0.999, 1.0)


def test_the_compiled_fold_is_built_and_runs_by_default() -> None:
    assert compiled_fold is not None, (
        "pystatsd._fold does not import: rebuild it (bash tools/setup_venv.sh, or "
        "pip install -v -e . to see why the compile failed)")
    if os.environ.get(distribution.FOLD_ENV, "auto") in ("auto", "", "compiled"):
        assert distribution.fold_values is compiled_fold
        assert distribution.sum_min_max is sum_min_max
        assert distribution.FOLD == "compiled"


@pytest.mark.parametrize(("wanted", "chosen"), [
    ("python", (fold_values_python, "python (PYSTATSD_FOLD=python)")),
    ("library", (None, "the library's add per sample (PYSTATSD_FOLD=library)")),
    ("compiled", (compiled_fold, "compiled")),
])
def test_the_switch_chooses_the_fold(wanted: str, chosen: tuple[Any, str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if wanted == "compiled" and compiled_fold is None:
        pytest.skip("pystatsd._fold is not built")
    monkeypatch.setenv(distribution.FOLD_ENV, wanted)
    fold, _, _, label = distribution._select_fold()
    assert label == chosen[1]
    if chosen[0] is not None:
        assert fold is chosen[0]
    else:  # the library's add: the fold declines every batch
        assert fold(array("d", [1.0]), new_sketch(ACCURACY)) is False


def test_an_unknown_switch_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(distribution.FOLD_ENV, "fast")
    with pytest.raises(RuntimeError, match="PYSTATSD_FOLD='fast'"):
        distribution._select_fold()


def sketch_state(sketch: Any) -> Any:
    """Everything the sketch holds, comparable with == (repr: -0.0 and 0.0, 0 and 0.0 apart)."""
    def store(s: Any) -> Any:
        return (repr(s.count), repr(s.min_key), repr(s.max_key), s.offset, len(s.bins),
                hashlib.sha1(array("d", s.bins).tobytes()).hexdigest())
    return (repr(sketch._count), repr(sketch._sum), repr(sketch._min), repr(sketch._max),
            repr(sketch._zero_count), store(sketch._store), store(sketch._negative_store))


def what_it_answers(sketch: Any) -> Any:
    """Its quantiles and its protobuf bytes (what the partials forwarder sends)."""
    def quantile(q: float) -> str:
        try:
            return repr(sketch.get_quantile_value(q))
        except OverflowError:  # the library's, past mapping.max_possible: the same for both
            return "OverflowError"
    return ([quantile(q) for q in QUANTILES],
            _protobuf()[1].to_proto(sketch).SerializeToString())


values = st.one_of(
    st.floats(-1000, 1000),
    st.integers(0, 500).map(float),  # repeated keys
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e-310, 2.2250738585072014e-308,
                     -2.2e-308, 1e-300, 1e300, -1e300, 1.7976931348623157e308]),
    st.floats(allow_nan=False, allow_infinity=False),
)
batches = st.lists(st.tuples(st.lists(values, max_size=300),
                             # sample-rated samples between folds: fractional bins
                             st.lists(st.tuples(values, st.sampled_from([2.0, 1 / 0.3, 10.0])),
                                      max_size=5)),
                   min_size=1, max_size=4)


@pytest.mark.parametrize("fold", FOLDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches)
def test_a_fold_leaves_what_the_librarys_add_per_sample_leaves(
        fold: Any, batches: list[tuple[list[float], list[tuple[float, float]]]]) -> None:
    reference, folded = new_sketch(ACCURACY), new_sketch(ACCURACY)
    for unit, weighted in batches:
        for value in unit:
            reference.add(value)
        if not fold(array("d", unit), folded):  # declined: the caller adds one by one
            for value in unit:
                folded.add(value)
        for value, weight in weighted:
            reference.add(value, weight)
            folded.add(value, weight)
        assert sketch_state(folded) == sketch_state(reference)
    assert what_it_answers(folded) == what_it_answers(reference)


@pytest.mark.parametrize("fold", FOLDS)
def test_a_bin_holding_a_sampled_weight_rounds_as_one_addition_after_another(fold: Any) -> None:
    # 10/3 + 1.0 thirteen times is 16.333333333333336; 10/3 + 13 is 16.333333333333332
    reference, folded = new_sketch(ACCURACY), new_sketch(ACCURACY)
    for sketch in (reference, folded):
        sketch.add(3.0, 1 / 0.3)
    for _ in range(13):
        reference.add(3.0)
    assert fold(array("d", [3.0] * 13), folded) is True
    assert sketch_state(folded) == sketch_state(reference)


@pytest.mark.parametrize("fold", FOLDS)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_value_not_finite_is_declined_untouched(fold: Any, bad: float) -> None:
    sketch = new_sketch(ACCURACY)
    sketch.add(3.0)
    before = sketch_state(sketch)
    assert fold(array("d", [1.0, bad, 2.0]), sketch) is False
    assert sketch_state(sketch) == before


@pytest.mark.parametrize("fold", FOLDS)
def test_distribution_fold_uses_it_with_the_same_stats(fold: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def cell() -> Distribution:
        made = Distribution()
        distribution.extend_samples(made.values, (float(i % 437) / 7 - 20 for i in range(2_500)))
        made.weighted.append((12.5, 4.0))
        return made

    monkeypatch.setattr(distribution, "fold_values", lambda values, sketch: False)
    reference = cell()
    reference.fold(ACCURACY)
    monkeypatch.setattr(distribution, "fold_values", fold)
    folded = cell()
    folded.fold(ACCURACY)
    assert not folded.values and not folded.weighted
    assert sketch_state(folded.sketch) == sketch_state(reference.sketch)
    assert what_it_answers(folded.sketch) == what_it_answers(reference.sketch)
    percentiles = [(90.0, "p90"), (99.0, "p99")]
    assert folded.stats(percentiles, ACCURACY) == reference.stats(percentiles, ACCURACY)


def outcome(function: Any, *arguments: Any) -> str:
    """What a call returns, or the error it raises, comparable with == (nan equal to nan)."""
    try:
        return repr(function(*arguments))
    except (OverflowError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(unit=st.lists(st.one_of(values, st.sampled_from([float("inf"), float("-inf"),
                                                        float("nan")])), max_size=200),
       mean=values)
def test_the_compiled_moments_are_math_fsum_min_and_max(unit: list[float], mean: float) -> None:
    # the exact sum is correctly rounded: math.fsum's, to the last bit, and its errors
    samples = array("d", unit)
    assert outcome(sum_min_max, samples) == outcome(distribution.sum_min_max_python, samples)
    assert (outcome(squared_deviations, samples, mean)
            == outcome(distribution.squared_deviations_python, samples, mean))


@needs_compiled
def test_the_compiled_exact_sum_outgrows_its_32_partials_on_the_stack() -> None:
    # values 2**20 apart in magnitude share no bits: each one is a partial of its own
    samples = array("d", [(-1) ** e * 1.1 * 2.0 ** e for e in range(-1000, 1000, 20)] * 2)
    assert outcome(sum_min_max, samples) == outcome(distribution.sum_min_max_python, samples)
    assert (outcome(squared_deviations, samples, 0.5)
            == outcome(distribution.squared_deviations_python, samples, 0.5))


# -- the samples' two widths: an array('f') while floats hold every sample exactly ---------

float_values = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                         st.integers(-2**24, 2**24).map(float),
                         st.sampled_from([0.0, -0.0, 12.5, 2.0**-149, -(2.0**-149),
                                         3.4028234663852886e38]))


@pytest.mark.parametrize("fold", FOLDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.lists(float_values, max_size=300))
def test_a_fold_of_float_samples_leaves_what_the_same_doubles_leave(fold: Any,
                                                                    unit: list[float]) -> None:
    narrow, wide = new_sketch(ACCURACY), new_sketch(ACCURACY)
    floats = array("f", unit)
    assert floats.tolist() == unit  # each held exactly: the strategy's promise
    assert fold(floats, narrow) == fold(array("d", unit), wide)
    assert sketch_state(narrow) == sketch_state(wide)


@needs_compiled
@settings(max_examples=200, deadline=None)
@given(unit=st.lists(float_values, max_size=200), mean=values)
def test_the_compiled_moments_of_float_samples_are_those_of_the_same_doubles(
        unit: list[float], mean: float) -> None:
    floats, doubles = array("f", unit), array("d", unit)
    assert outcome(sum_min_max, floats) == outcome(sum_min_max, doubles)
    assert outcome(squared_deviations, floats, mean) == outcome(squared_deviations, doubles, mean)


@needs_compiled
def test_the_compiled_fold_declines_and_the_moments_refuse_another_kind_of_array() -> None:
    sketch = new_sketch(ACCURACY)
    before = sketch_state(sketch)
    assert compiled_fold(array("l", [1, 2]), sketch) is False
    assert sketch_state(sketch) == before
    with pytest.raises(TypeError, match="array\\('l'\\)"):
        sum_min_max(array("l", [1, 2]))
    with pytest.raises(TypeError, match="array\\('q'\\)"):
        squared_deviations(array("q", [1, 2]), 0.0)


def test_sketches_of_one_accuracy_share_one_mapping_that_nothing_changes() -> None:
    first, second = new_sketch(ACCURACY), new_sketch(ACCURACY)
    assert first._mapping is second._mapping
    assert new_sketch(0.02)._mapping is not first._mapping
    before = dict(vars(first._mapping))
    folded = Distribution()
    distribution.extend_samples(folded.values, [float(v) for v in range(-50, 3_000)])
    folded.fold(ACCURACY)
    assert folded.sketch is not None and folded.sketch._mapping is first._mapping
    assert vars(first._mapping) == before
