"""Known corpora for the global-tier tests: per host, samples fed to a real MetricMgr that
keeps partials, and the same union fed to one MetricMgr, whose statistics are the truth."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pystatsd.aggregation import MetricMgr
from pystatsd.config import build_config
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, TRACE, Sample
from pystatsd.snapshot import SeriesStats, Snapshot

ACCURACY = 0.01
REPO = Path(__file__).resolve().parents[2]


def manager(exact_samples: int, partials: bool = True,
            set_members: int = 1000) -> MetricMgr:
    forwarders: dict[str, Any] = (
        {"kafka": {"kafka_topic": "p", "format": "partials", "kafka_broker": "127.0.0.1:1"}}
        if partials else {"console": {}})
    config = build_config({"timer_exact_samples": exact_samples,
                           "sketch_relative_accuracy": ACCURACY, "forwarders": forwarders,
                           "partial_set_members": set_members})
    return MetricMgr(config)


def corpus(host: int, seed: int, series: int = 4, samples: int = 300) -> list[Sample]:
    """Samples of every type; each host sends a share of the same series, so merging matters."""
    rng = random.Random(seed * 1000 + host)
    out: list[Sample] = []
    for index in range(series):
        tags = (("svc", f"s{index}"),)
        for _ in range(samples):
            out.append(Sample("api.latency", TIMER, rng.lognormvariate(3, 1), 1.0, tags))
        for _ in range(samples // 10):
            out.append(Sample("api.size", HISTOGRAM, rng.uniform(1, 500), 0.5, tags))
            out.append(Sample("api.hits", COUNTER, float(rng.randint(1, 9)), 0.25, tags))
            out.append(Sample("api.users", SET, f"u{rng.randint(0, 400)}", 1.0, tags))
            out.append(Sample("api.events", TRACE, 1.0, 1.0, tags))
        out.append(Sample("api.queue", GAUGE, float(host * 100 + index), 1.0, tags))
    return out


def host_snapshot(host: int, start: float, samples: list[Sample], exact_samples: int,
                  interval: float = 10.0, set_members: int = 1000) -> Snapshot:
    mgr = manager(exact_samples, set_members=set_members)
    for sample in samples:
        assert mgr.add(sample)
    series = mgr.finish(mgr.swap(), interval)
    return Snapshot(start, interval, f"host{host}", tuple(series))


def truth(samples: list[Sample], exact_samples: int,
          interval: float = 10.0) -> dict[tuple[str, str, tuple[tuple[str, str], ...]],
                                           SeriesStats]:
    """What one daemon receiving every host's samples would report (exactly, when
    ``exact_samples`` holds them all)."""
    mgr = manager(exact_samples, partials=False)
    for sample in samples:
        assert mgr.add(sample)
    return {(s.name, s.type, s.tags): s for s in mgr.finish(mgr.swap(), interval)}


def union_values(samples: list[Sample], name: str, kind: str,
                 tags: tuple[tuple[str, str], ...]) -> list[float]:
    """Every sample of one series, sorted, each repeated 1 / rate times (rates here are 1 / n)."""
    values: list[float] = []
    for sample in samples:
        if (sample.name, sample.type, sample.tags) == (name, kind, tags):
            values.extend([float(sample.value)] * round(1 / sample.rate))
    return sorted(values)


def assert_matches(merged: dict[str, float], expected: SeriesStats,
                   union: list[float] | None = None) -> None:
    """Counts and sums exact (to float rounding of a different summation order), extremes
    exact; percentiles exact, or with ``union`` (the sorted samples, once sketched) within the
    relative accuracy of the exact samples at the percentile's rank (one rank either side: the
    sketch's rank, q * (n - 1), and nearest-rank differ by less than one)."""
    assert merged.keys() == expected.stats.keys(), expected.name
    for key, want in expected.stats.items():
        got = merged[key]
        if key in ("count", "sum", "rate", "min", "max", "mean", "stddev", "value"):
            assert abs(got - want) <= 1e-9 * max(1.0, abs(want)), (expected.name, key, got, want)
        elif expected.type == GAUGE:
            assert got == want
        elif union is None:  # median and percentiles, exact
            assert got == want, (expected.name, key, got, want)
        else:
            q = 0.5 if key == "median" else float(key[1:].replace("_", ".")) / 100
            rank = q * (len(union) - 1)
            low = union[max(0, math.floor(rank) - 1)] * (1 - ACCURACY)
            high = union[min(len(union) - 1, math.ceil(rank) + 1)] * (1 + ACCURACY)
            assert low <= got <= high, (expected.name, key, got, low, high)


class Member:
    """One ``mode: global`` daemon, its log in a file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pystatsd", "-c", str(config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.1)
        return text in self.log()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode
