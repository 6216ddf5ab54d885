"""Issue 11 item 10: coverage-guided fuzzing of the decoders and the ingest pipeline.

A bounded atheris run (tools/fuzz.py) on every suite run, a short hypothesis run that needs
no atheris, and a replay of every input that ever failed (tests/corpus/fuzz/)."""

from __future__ import annotations

import importlib.util
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "fuzz.py"
FOUND = REPO / "tests" / "corpus" / "fuzz"
SUITE_SECONDS = 12


def load_check() -> Callable[[bytes], None]:
    spec = importlib.util.spec_from_file_location("pystatsd_fuzz_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check: Callable[[bytes], None] = module.check
    return check


check = load_check()


def found_inputs() -> list[Any]:
    return [pytest.param(p, id=p.name) for p in sorted(FOUND.iterdir()) if p.is_file()
            and p.name != "README.md"]


@pytest.fixture(autouse=True)
def quiet_rejects() -> Any:
    logging.disable(logging.WARNING)  # every input logs its rejects: noise for these tests
    yield
    logging.disable(logging.NOTSET)


def test_kept_inputs_are_there() -> None:
    assert len(found_inputs()) >= 3


@pytest.mark.parametrize("kept", found_inputs())
def test_an_input_that_once_failed_passes_now(kept: Path) -> None:
    check(kept.read_bytes())


@pytest.mark.integration
def test_coverage_guided_fuzzing_finds_nothing() -> None:
    pytest.importorskip("atheris", reason="atheris does not install here: the hypothesis "
                                          "test below covers the same check")
    result = subprocess.run([sys.executable, str(TOOL), "--seconds", str(SUITE_SECONDS)],
                            capture_output=True, text=True, timeout=SUITE_SECONDS + 60)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = re.search(r"Done (\d+) runs", result.stderr)
    assert runs and int(runs.group(1)) > 500, result.stderr[-2000:]


# Statsd-looking bytes reach deeper than uniform ones: lines built from the grammar's pieces.
_piece = st.sampled_from([b"a", b"b.c", b":", b"|", b"c", b"g", b"ms", b"h", b"d", b"s", b"@",
                          b"0.5", b"#", b"t:v", b",", b"=", b"+", b"-", b"1", b"1e308", b"\n",
                          b"{", b"}", b"[", b"]", b'"metric_name"', b'"value"', b"\xff", b" ",
                          b"5e-324", b"nan", b"|T", b"_e{", b"_sc"])
_payload = st.one_of(st.binary(max_size=300),
                     st.lists(_piece, max_size=60).map(b"".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_payload)
def test_any_bytes_keep_the_promises(payload: bytes) -> None:
    check(payload)
