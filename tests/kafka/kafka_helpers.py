"""Helpers shared by the Kafka tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pystatsd.config import build_config
from pystatsd.snapshot import SeriesStats, Snapshot


def forwarder_config(section: dict[str, Any], name: str = "kafka") -> dict[str, Any]:
    """A section validated and completed with defaults, as the daemon would hand it over."""
    config: dict[str, Any] = build_config({"forwarders": {name: section}})["forwarders"][name]
    return config


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def snapshot(start: float, series: list[SeriesStats], interval: float = 10.0,
             host: str = "testhost") -> Snapshot:
    return Snapshot(start=start, interval=interval, host=host, series=series)
