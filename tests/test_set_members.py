"""Set members kept as 64-bit hashes (pystatsd/set_members.py): the compiled module hashes a
member's bytes exactly as the Python path does (mmh3), its MemberSet cell answers as the
reference's dict of hashes does, and a set counts the distinct members of a known corpus
through either line cache, either kind of cell, and a hot restart's hand-over."""

from __future__ import annotations

import gc
import pickle
import random
import unicodedata
from typing import Any

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pystatsd import aggregation
from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.decoders import parse_statsd_line
from pystatsd.hot_restart import export_state, merge_state
from pystatsd.ingest import Pipeline
from pystatsd.sample import SET, Sample
from pystatsd.selfstats import SelfStats
from pystatsd.set_members import member_hash, text_member_hash
from tests.line_caches import (
    LINE_CACHES,
    SET_CELLS,
    MemberSet,
    needs_compiled,
    pipelines_using,
    set_cells_of,
)

NFC = unicodedata.normalize("NFC", "caf\u00e9")
NFD = unicodedata.normalize("NFD", "caf\u00e9")
MEMBERS = [
    "alice", "Alice", "alice ", NFC, NFD,  # the same to a reader, other bytes: distinct
    "1", "1.0", "01", "2001:db8::1", "\U0001f600", "a" * 15, "a" * 16, "a" * 17, "b" * 31,
    "b" * 32, "b" * 33, "x" * 300,
] + [f"user-{n}" for n in range(500)]
"""A corpus of known distinct members: 517 (NFC and NFD of one word differ in bytes)."""


def corpus_lines(seed: int = 3) -> list[bytes]:
    """Every member of MEMBERS sent to ``users`` (tagged and not: two series), most of them
    many times, in a shuffled order."""
    rng = random.Random(seed)
    lines = []
    for member in MEMBERS:
        for _ in range(rng.randrange(1, 4)):
            lines.append(b"users:%s|s" % member.encode())
            lines.append(b"users:%s|s|#env:prod" % member.encode())
    rng.shuffle(lines)
    return lines


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_the_compiled_hash_is_mmh3s_on_any_bytes(member: bytes) -> None:
    from pystatsd._linecache import member_hash as compiled_hash

    assert compiled_hash(member) == member_hash(member) == mmh3.hash64(member, 0, True, True)[0]


def test_the_hash_is_fixed_for_every_process_and_host() -> None:
    # Receive workers and the global tier's hosts must agree: a constant, not Python's hash().
    assert member_hash(b"alice") == mmh3.hash64(b"alice")[0] == 5699955792253506986
    assert text_member_hash(NFC) != text_member_hash(NFD)
    assert text_member_hash("bad\ud800") == member_hash(b"bad\xed\xa0\x80")  # no exception


def counts_after(lines: list[bytes], line_cache: Any, cells: Any) -> dict[Any, float]:
    with pipelines_using(line_cache), set_cells_of(cells):
        config = build_config({"forwarders": {}})
        manager = MetricMgr(config)
        pipeline = Pipeline(config, manager, SelfStats())
        for start in range(0, len(lines), 20):
            pipeline.ingest(b"\n".join(lines[start:start + 20]))
        table = manager.swap()
        assert all(type(cell) is cells for cell in table.series.values())
        return {(s.name, s.tags): s.stats["count"] for s in manager.finish(table, 10.0)}


@pytest.mark.parametrize("cells", SET_CELLS)
@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_a_set_counts_the_distinct_members_of_a_known_corpus(line_cache: Any,
                                                             cells: Any) -> None:
    counts = counts_after(corpus_lines(), line_cache, cells)
    assert counts == {("users", ()): 517.0, ("users", (("env", "prod"),)): 517.0}


@pytest.mark.parametrize("cells", SET_CELLS)
@pytest.mark.parametrize("line_cache", LINE_CACHES)
def test_members_that_differ_only_in_bytes_are_distinct_and_repeats_are_not(
        line_cache: Any, cells: Any) -> None:
    lines = [b"s:%s|s" % m.encode() for m in (NFC, NFD, NFC, "A", "a", "a", "a ", "a")] * 3
    assert counts_after(lines, line_cache, cells) == {("s", ()): 5.0}
    with set_cells_of(cells):  # and by the decoder and MetricMgr.add alone, every line
        manager = MetricMgr(build_config({"forwarders": {}}))
        for line in lines:
            assert manager.add(parse_statsd_line(line)[0])
        assert [s.stats for s in manager.finish(manager.swap(), 10.0)] == [{"count": 5.0}]


@pytest.mark.parametrize("cells", SET_CELLS)
def test_set_cells_stay_out_of_the_cyclic_gc(cells: Any) -> None:
    with set_cells_of(cells):
        manager = MetricMgr(build_config({"forwarders": {}}))
        for n in range(100):
            manager.add(Sample("s", SET, f"u{n}"))
        cell = manager.swap().series[("s", SET, ())]
    assert len(cell) == 100
    assert not gc.is_tracked(cell)


HASHES = st.one_of(st.integers(-2**63, 2**63 - 1),
                   st.sampled_from([0, -1, 1, -2**63, 2**63 - 1, 8, 16, -8]))


@needs_compiled
@settings(max_examples=200, deadline=None)
@given(st.lists(HASHES, max_size=300), st.lists(HASHES, max_size=50), st.binary(min_size=8,
                                                                               max_size=8))
def test_a_member_set_answers_as_the_dict_of_hashes_does(members: list[int], others: list[int],
                                                         probe_key: bytes) -> None:
    from pystatsd import _linecache

    _linecache._seed_probes(probe_key)  # where hashes sit must change nothing seen
    compact, reference = MemberSet(), {}
    for member in members:
        compact[member] = None
        reference[member] = None
    assert len(compact) == len(reference)
    assert sorted(compact) == sorted(reference) == sorted(compact.keys())
    assert all(member in compact for member in members)
    assert [member in compact for member in others] == [member in reference for member in others]
    assert sorted(pickle.loads(pickle.dumps(compact))) == sorted(reference)
    both_ways = dict(reference)
    both_ways.update(MemberSet())  # dict.update takes a MemberSet (a hot restart's merge)
    grown = MemberSet()
    grown.update(reference)
    grown.update(dict.fromkeys(others))
    both_ways.update(grown)
    assert sorted(both_ways) == sorted({**reference, **dict.fromkeys(others)})
    compact.clear()
    assert len(compact) == 0 and list(compact) == []


@pytest.mark.parametrize("cells", SET_CELLS)
def test_a_hot_restart_hands_over_set_cells_and_merges_them(cells: Any) -> None:
    with set_cells_of(cells):
        old, new = MetricMgr(build_config({"forwarders": {}})), MetricMgr(
            build_config({"forwarders": {}}))
        for n in range(300):
            old.add(Sample("s", SET, f"u{n}"))
        for n in range(200, 400):
            new.add(Sample("s", SET, f"u{n}"))
        state = pickle.loads(export_state(old, old.swap(), 0.0, {}))
        merge_state(new, state)
        stats = {s.name: s.stats for s in new.finish(new.swap(), 10.0)}
    assert stats == {"s": {"count": 400.0}}


def test_the_console_shows_members_as_their_hashes() -> None:
    manager = MetricMgr(build_config({"forwarders": {}}))
    for member in ("b", "a", "b"):
        manager.add(Sample("users", SET, member))
    shown = manager.current(SET)[("users", SET, ())]
    assert shown == sorted(f"{member_hash(m) & (2**64 - 1):016x}" for m in (b"a", b"b"))


def test_which_set_cell_follows_the_line_cache() -> None:
    if aggregation.LineCache is aggregation.PythonLineCache:
        assert aggregation.new_set_cell is dict
    else:
        assert aggregation.new_set_cell is MemberSet
