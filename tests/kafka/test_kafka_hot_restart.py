"""A hot restart with a Kafka forwarder: the successor opens the spool (an flock) only after
the old daemon closed its forwarder, and every flush of both processes reaches the topic."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from kafka_helpers import wait_for

from forwarders.kafka.reading import read_topic

pytestmark = pytest.mark.integration


def exited(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_usr2_with_a_kafka_spool_delivers_every_flush_once(start_daemon, kafka_bootstrap,
                                                            topic) -> None:
    daemon = start_daemon({"flush_interval": 1, "shutdown_timeout": 10,
                           "self_metrics": {"enabled": False},
                           "forwarders": {"kafka": {"kafka_broker": kafka_bootstrap,
                                                    "kafka_topic": topic}}})
    sent = 0
    for second in range(6):
        if second == 3:
            daemon.signal(signal.SIGUSR2)
        for _ in range(10):
            daemon.send_udp(b"hr.kafka:1|c\n" * 9 + b"hr.kafka:1|c")
            sent += 10
            time.sleep(0.1)
    stderr = daemon.stderr
    assert wait_for(lambda: any("took over from pid" in line for line in list(stderr)), 30), \
        "".join(stderr)
    pid = int(next(line for line in stderr if "started successor pid" in line)
              .split("successor pid ")[1].split(":")[0])
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: exited(pid), 30)
    daemon.kill()
    log = "".join(stderr)
    assert "cannot start" not in log and "may be lost" not in log, log
    per_interval: dict[str, float] = defaultdict(float)
    for message in read_topic(kafka_bootstrap, topic):
        if message.key == b"hr.kafka":
            event = orjson.loads(message.value)
            per_interval[event["@timestamp"]] += event["value"]
    assert sum(per_interval.values()) == sent, (per_interval, log[-2000:])
