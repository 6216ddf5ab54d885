"""tools/kafka_tail.py prints what is in a topic (partition, offset, key and value), folds the
daemon's own series when asked, and says so when no broker answers instead of waiting
silently."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka_helpers import snapshot

from forwarders.kafka.embedded_broker import EmbeddedBroker
from pystatsd.snapshot import SeriesStats

TOOL = Path(__file__).resolve().parents[2] / "tools" / "kafka_tail.py"


def tail(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(TOOL), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def port_nobody_answers() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
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


@pytest.mark.integration
def test_self_metrics_fold_into_one_line_per_flush(make_forwarder, kafka_bootstrap, topic):
    forwarder = make_forwarder({"kafka_broker": kafka_bootstrap, "kafka_topic": topic,
                                "format": "json"})
    series = [SeriesStats("api.hits", "counter", (("env", "stage"),), {"count": 4.0}),
              SeriesStats("pystatsd.received.datagrams", "counter", (), {"count": 7}),
              SeriesStats("pystatsd.rejected.bad_line", "counter", (), {"count": 2}),
              SeriesStats("pystatsd.rejected.bad_json", "counter", (), {"count": 1}),
              SeriesStats("pystatsd.series", "gauge", (), {"value": 3.0})]
    assert forwarder.submit(snapshot(1_700_000_000.0, series))
    assert forwarder.close(10) == 0

    def shown(mode: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(TOOL), "--bootstrap", kafka_bootstrap, "--topic", topic,
             "--from-beginning", "--max", "5", "--timeout", "10", "--self-metrics", mode],
            capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.splitlines()

    summary = shown("summary")
    assert [line for line in summary if " key=" in line][0].split()[2] == \
        "key=api.hits,env=stage"
    assert len([line for line in summary if " key=" in line]) == 1
    folded = [line for line in summary if line.startswith("-- pystatsd.* self-metrics")]
    assert len(folded) == 1
    assert folded[0].endswith("4 series: received.datagrams=7 rejected=3 series=3")
    assert any("self_metrics.enabled: false" in line for line in summary)
    assert [line.split()[2] for line in shown("hide")] == ["key=api.hits,env=stage"]
    assert len(shown("show")) == 5


@pytest.mark.slow  # waits out a timeout by design: out of the fast loop
def test_says_when_no_broker_answers_and_gives_up_after_the_timeout() -> None:
    port = port_nobody_answers()
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(TOOL), "--bootstrap", f"127.0.0.1:{port}",
                           "--topic", "metrics", "--timeout", "1"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert time.monotonic() - started < 15
    assert done.stderr.splitlines()[-1] == \
        f"kafka_tail: no broker answered at 127.0.0.1:{port} within 1 s"


@pytest.mark.slow  # waits out a timeout by design: out of the fast loop
def test_without_a_timeout_it_says_it_is_still_waiting_for_a_broker() -> None:
    port = port_nobody_answers()
    proc = tail("--bootstrap", f"127.0.0.1:{port}", "--topic", "metrics")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(2.5)  # it keeps waiting...
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    # ... but not silently, and a TERM stops it.
    assert f"kafka_tail: no broker answers at 127.0.0.1:{port} yet; still trying" in err
    assert proc.returncode == 0


@pytest.mark.integration
def test_exits_with_an_error_when_the_broker_goes_away(make_forwarder, topic) -> None:
    with EmbeddedBroker() as broker:
        forwarder = make_forwarder({"kafka_broker": broker.bootstrap, "kafka_topic": topic,
                                    "format": "influx"})
        assert forwarder.submit(snapshot(1_700_000_000.0, [
            SeriesStats("gone.g", "gauge", (), {"value": 1.0})]))
        assert forwarder.close(10) == 0
        proc = tail("--bootstrap", broker.bootstrap, "--topic", topic, "--from-beginning")
        try:
            assert proc.stdout is not None
            assert select.select([proc.stdout], [], [], 20)[0], "nothing shown"
            assert "gone.g" in proc.stdout.readline()  # following the topic
            broker.stop()
            stopped = time.monotonic()
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert time.monotonic() - stopped < 15
    assert err.splitlines()[-1] == f"kafka_tail: the broker at {broker.bootstrap} went away"
