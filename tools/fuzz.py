#!/usr/bin/env python3
"""Coverage-guided fuzzing of the decoders and the ingest pipeline (atheris, i.e. libFuzzer).

For any bytes, one check (:func:`check`):
  - ``decode_payload`` never raises and never hits a decoder bug (``decoder.internal_errors``
    stays 0: a bug costs one line in production, so only the counter shows it);
  - the ingest pipeline (its line cache, the fast path) gives exactly the snapshots and
    reject counts of the slow path (``decode_payload`` + tagger + ``MetricMgr.add``), over two
    intervals, the payload arriving twice in the first (cache hits) and once in the second
    (cells rebound to a new table).

Run by hand for as long as you like:

    .venv/bin/python tools/fuzz.py --seconds 600

Seeds are tests/corpus/{valid,invalid}/*.txt and tests/corpus/fuzz/*; inputs that grow coverage
go to a scratch directory (``--work``). An input that fails the check or runs longer than
``--timeout`` seconds is written there as crash-*/timeout-*; ``--keep`` copies it into
tests/corpus/fuzz/, whose files the suite replays (tests/fuzz/test_fuzz.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pystatsd.selfstats import SelfStats

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"
FOUND = CORPUS / "fuzz"
"""Inputs that once crashed or hung a decoder, or broke fast path = slow path: kept forever."""

CONFIG = {"forwarders": {}, "agent": {"tags": {"host": "h1", "env": "prod"}},
          "timer_exact_samples": 4, "percentiles": [50, 99.9], "max_series": 40}
"""Small limits so short inputs reach the sketch fold and the series cap too."""


def check(data: bytes) -> None:
    """Raise AssertionError (or anything else) when ``data`` breaks a promise of the decoders
    or the pipeline; return quietly otherwise."""
    from pystatsd.aggregation import MetricMgr
    from pystatsd.config import build_config
    from pystatsd.decoders import INTERNAL_ERRORS, decode_payload
    from pystatsd.ingest import Pipeline
    from pystatsd.selfstats import SelfStats
    from pystatsd.tagging import Tagger

    config = _CONFIGS.get("built") or _CONFIGS.setdefault("built", build_config(CONFIG))
    intervals = [[data, data], [data]]

    slow_stats = SelfStats(log_interval=1e9)
    manager = MetricMgr(config, slow_stats)
    tagger = Tagger(config["agent"]["tags"], config["tag_precedence"])
    slow = []
    for payloads in intervals:
        for payload in payloads:
            events: list[Any] = []  # the pipeline forwards DogStatsD events: so does this
            for sample in decode_payload(payload, slow_stats, events=events):
                manager.add(sample._replace(tags=tagger.apply(sample.tags)))
            for event in events:
                manager.add_event(dataclasses.replace(event, tags=tagger.apply(event.tags)))
        table = manager.swap()
        slow.append((manager.finish(table, 10.0), table.events))
    assert slow_stats.counters[INTERNAL_ERRORS] == 0, "decoder bug (decoder.internal_errors)"

    fast_stats = SelfStats(log_interval=1e9)
    manager = MetricMgr(config)
    pipeline = Pipeline(config, manager, fast_stats)
    fast = []
    for payloads in intervals:
        for payload in payloads:
            pipeline.ingest(payload)
        table = manager.swap()
        fast.append((manager.finish(table, 10.0), table.events))
    # repr: NaN (from an inf - inf) is equal to itself there, as it must be for this purpose.
    assert repr(fast) == repr(slow), "fast path and slow path disagree"
    assert _rejects(fast_stats) == _rejects(slow_stats), "reject counts disagree"
    assert fast_stats.counters[INTERNAL_ERRORS] == 0, "decoder bug on the fast path"


_CONFIGS: dict[str, dict[str, object]] = {}
"""The validated CONFIG, built once: validating it costs more than checking an input."""


def _rejects(stats: SelfStats) -> dict[str, int]:
    return {k: v for k, v in stats.counters.items() if k.startswith("rejected.") and v}


def _seed_dirs() -> list[str]:
    return [str(d) for d in (CORPUS / "valid", CORPUS / "invalid", FOUND) if d.is_dir()]


def _fuzz_child(args: argparse.Namespace) -> int:
    """In the child process: hand over to libFuzzer (it exits the process when done)."""
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # rejects are logged rate-limited: noise here
    with atheris.instrument_imports(include=["pystatsd", "orjson"]):
        import pystatsd.aggregation  # noqa: F401
        import pystatsd.decoders  # noqa: F401
        import pystatsd.ingest  # noqa: F401
    flags = [sys.argv[0], f"-max_total_time={args.seconds}", f"-timeout={args.timeout}",
             f"-artifact_prefix={args.work}/", "-rss_limit_mb=2048", "-print_final_stats=1",
             f"-max_len={args.max_len}", args.work, *_seed_dirs()]
    atheris.Setup(flags, check)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--timeout", type=int, default=5,
                        help="seconds one input may take before it counts as a hang")
    parser.add_argument("--max-len", type=int, default=4096, help="largest input tried")
    parser.add_argument("--work", help="scratch corpus directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true",
                        help="copy failing inputs into tests/corpus/fuzz/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _fuzz_child(args)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="pystatsd-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    child = [sys.executable, __file__, "--child", "--seconds", str(args.seconds),
             "--timeout", str(args.timeout), "--max-len", str(args.max_len),
             "--work", str(work)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = subprocess.call(child, env=env, cwd=work)
    found = sorted(p for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    for artifact in found:
        print(f"failing input: {artifact}", file=sys.stderr)
        if args.keep:
            FOUND.mkdir(exist_ok=True)
            shutil.copy(artifact, FOUND / artifact.name)
            print(f"kept as {FOUND / artifact.name}", file=sys.stderr)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if found or code else 0


if __name__ == "__main__":
    sys.exit(main())
