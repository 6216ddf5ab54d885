"""Both line caches, for the tests that must hold for each: the pure-Python reference and the
compiled twin (skipped where it is not built; tests/test_linecache_compiled.py fails then)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pystatsd import aggregation
from pystatsd import ingest as ingest_module
from pystatsd.aggregation import PythonLineCache

try:
    from pystatsd._linecache import LineCache as CompiledLineCache
    from pystatsd._linecache import MemberSet
except ImportError:  # not built: the tests of it are skipped, and one test says so
    CompiledLineCache = None
    MemberSet = dict  # no compact set cells either: every set cell is a dict

needs_compiled = pytest.mark.skipif(CompiledLineCache is None,
                                    reason="the compiled line cache is not built")

LINE_CACHES = [
    pytest.param(PythonLineCache, id="python"),
    pytest.param(CompiledLineCache, id="compiled", marks=needs_compiled),
]
SET_CELLS = [
    pytest.param(dict, id="dict-cells"),
    pytest.param(MemberSet, id="member-set-cells", marks=needs_compiled),
]
"""Both kinds of set cell: the reference's dict of hashes and the compiled MemberSet."""


def pipelines_using(line_cache: Any) -> Any:
    """Pipelines made inside use ``line_cache`` (as the daemon would with it selected)."""
    return _patched(ingest_module, "LineCache", line_cache)


def set_cells_of(kind: Any) -> Any:
    """Inside, new set cells are ``kind`` (as with one line cache or the other selected)."""
    return _patched(aggregation, "new_set_cell", kind)


@contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, name, value)
        yield
