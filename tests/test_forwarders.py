"""The forwarder contract every forwarder relies on, and the console and file forwarders."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarders import (
    AggregateForwarder,
    Forwarder,
    ForwarderContext,
    UnknownForwarder,
    load_forwarder_class,
)
from forwarders.file import FileForwarder
from pystatsd.config import build_config
from pystatsd.snapshot import SeriesStats, Snapshot


def snapshot(n: int = 2, start: float = 1_700_000_000.0) -> Snapshot:
    series = [SeriesStats(f"m{i}", "counter", (("env", "stage"),), {"count": i, "rate": i / 10})
              for i in range(n)]
    return Snapshot(start=start, interval=10.0, host="h1", series=tuple(series))


class Recording(AggregateForwarder):
    """A forwarder whose backend is a list, and which can be told to fail or to stall."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Snapshot] = []
        self.failures_left = 0
        self.gate = threading.Event()
        self.gate.set()

    def send(self, snapshot: Snapshot) -> None:
        self.gate.wait(5)
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("backend down")
        self.sent.append(snapshot)


def make(cls: type[Forwarder], section: dict[str, Any], debug: bool = False,
         tmp: Path | None = None) -> Forwarder:
    config = build_config({"forwarders": {"under_test": {"type": "console", **section}}}
                          if cls is not FileForwarder else
                          {"forwarders": {"under_test": {"type": "file", **section}}})
    ctx = ForwarderContext(debug_mode=debug, host="h1", state_dir=tmp or Path("/nonexistent"))
    return cls("under_test", config["forwarders"]["under_test"], ctx)


def test_a_failing_backend_is_counted_and_the_forwarder_keeps_going() -> None:
    forwarder = make(Recording, {})
    forwarder.failures_left = 1
    forwarder.start()
    assert forwarder.submit(snapshot())
    assert forwarder.submit(snapshot(3))
    assert forwarder.close(5) == 0
    assert forwarder.counters["send_errors"] == 1
    assert [len(s.series) for s in forwarder.sent] == [3]


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    forwarder = make(Recording, {"queue_size": 2})
    forwarder.gate.clear()  # the backend stalls
    forwarder.start()
    results = [forwarder.submit(snapshot(5)) for _ in range(5)]
    # one taken by the stalled thread, two queued, the rest dropped
    assert results.count(False) >= 2
    assert forwarder.counters["dropped_queue_full"] == 5 * results.count(False)
    forwarder.gate.set()
    assert forwarder.close(5) == 0
    assert sum(len(s.series) for s in forwarder.sent) == 5 * results.count(True)


def test_close_reports_what_it_could_not_deliver(caplog: pytest.LogCaptureFixture) -> None:
    forwarder = make(Recording, {"queue_size": 4})
    forwarder.gate.clear()
    forwarder.start()
    for _ in range(3):
        forwarder.submit(snapshot(2))
    left = forwarder.close(0.2)
    forwarder.gate.set()
    assert left in (4, 6)  # the one being sent may or may not finish
    assert "undelivered" in caplog.text


def test_debug_mode_logs_instead_of_sending(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pystatsd.forwarders")
    forwarder = make(Recording, {}, debug=True)
    forwarder.start()
    forwarder.submit(snapshot(1))
    forwarder.close(5)
    assert forwarder.sent == []
    assert '"name":"m0"' in caplog.text and "not sent" in caplog.text


def test_console_prints_one_json_record_per_series(capfd: pytest.CaptureFixture[str]) -> None:
    forwarder = make(load_forwarder_class("console"), {})
    forwarder.start()
    forwarder.submit(snapshot(2))
    assert forwarder.close(5) == 0
    lines = capfd.readouterr().out.splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {"name": f"m{i}", "type": "counter", "tags": {"env": "stage"},
         "stats": {"count": i, "rate": i / 10}, "interval_start": 1_700_000_000.0,
         "interval": 10.0, "host": "h1"} for i in range(2)]


def test_file_forwarder_appends_and_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "out" / "metrics.jsonl"
    forwarder = make(FileForwarder, {"path": str(path), "max_bytes": 600, "backup_count": 2})
    forwarder.start()
    for i in range(8):
        forwarder.submit(snapshot(2, start=float(i)))
    assert forwarder.close(5) == 0
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["metrics.jsonl", "metrics.jsonl.1", "metrics.jsonl.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 600
    newest = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert newest[-1]["interval_start"] == 7.0
    kept = [orjson.loads(line)["interval_start"] for p in path.parent.iterdir()
            for line in p.read_bytes().splitlines()]
    # two snapshots fit a file; the oldest two, beyond backup_count, were removed
    assert sorted(set(kept)) == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_unknown_forwarder_lists_the_known_ones() -> None:
    with pytest.raises(UnknownForwarder, match="known: .*console.*file"):
        load_forwarder_class("graphitee")
