"""Helpers shared by the Kafka tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pystatsd.config import build_config
from pystatsd.snapshot import SeriesStats, Snapshot

REPO = Path(__file__).resolve().parents[2]


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


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java client picks for a key: murmur2, made positive, modulo."""
    mask = 0xFFFFFFFF
    m, length = 0x5BD1E995, len(key)
    h = (0x9747B28C ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length % 4
    if tail >= 3:
        h ^= key[whole + 2] << 16
    if tail >= 2:
        h ^= key[whole + 1] << 8
    if tail >= 1:
        h ^= key[whole]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def status(daemon: Any) -> dict[str, Any]:
    """The Kafka forwarder's stats, as ``pystatsd --status`` prints them (asked on the admin
    socket from this process, not through the CLI: see DaemonProcess.status)."""
    stats: dict[str, Any] = daemon.status()["forwarders"]["kafka"]
    return stats


def wait_status(daemon: Any, condition: Any, timeout: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        stats = status(daemon)
        if condition(stats) or time.monotonic() > end:
            assert condition(stats), orjson.dumps(stats).decode()
            return stats
        time.sleep(0.2)
