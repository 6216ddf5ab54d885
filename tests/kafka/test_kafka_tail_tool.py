"""tools/kafka_tail.py prints what is in a topic: partition, offset, key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kafka_helpers import snapshot

from pystatsd.snapshot import SeriesStats

pytestmark = pytest.mark.integration
TOOL = Path(__file__).resolve().parents[2] / "tools" / "kafka_tail.py"


def test_tail_prints_each_message_with_its_key(make_forwarder, kafka_bootstrap, topic):
    forwarder = make_forwarder({"kafka_broker": kafka_bootstrap, "kafka_topic": topic,
                                "format": "influx"})
    series = [SeriesStats("tail.g", "gauge", (("n", str(i)),), {"value": float(i)})
              for i in range(3)]
    assert forwarder.submit(snapshot(1_700_000_000.0, series))
    assert forwarder.close(10) == 0
    done = subprocess.run(
        [sys.executable, str(TOOL), "--bootstrap", kafka_bootstrap, "--topic", topic,
         "--from-beginning", "--max", "3", "--timeout", "10"],
        capture_output=True, text=True, timeout=30, check=True)
    lines = sorted(line.split(" ", 2)[2] for line in done.stdout.splitlines())
    assert lines == [f"key=tail.g,n={i} tail.g,n={i} value={i}.0 1700000000000000000"
                     for i in range(3)]
    assert all(line.startswith("p") for line in done.stdout.splitlines())
