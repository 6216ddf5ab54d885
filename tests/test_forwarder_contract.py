"""Every built-in forwarder passes the forwarder contract suite (``forwarders.contract``), each
against a real backend: stdout, a file, the Kafka-protocol broker, UDP statsd backends."""

from __future__ import annotations

import io
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from forwarders import ForwarderContext, load_forwarder_class
from forwarders.contract import AggregateContract, RelayContract
from forwarders.kafka.embedded_broker import EmbeddedBroker
from pystatsd.config import build_config


def section(type_name: str, **keys: Any) -> dict[str, Any]:
    """A section validated and filled with defaults, as the daemon hands it over."""
    config = build_config({"forwarders": {"under_test": {"type": type_name, **keys}}})
    result: dict[str, Any] = config["forwarders"]["under_test"]
    return result


def build(type_name: str, keys: dict[str, Any], debug_mode: bool, state_dir: Path) -> Any:
    cls = load_forwarder_class(type_name)
    return cls("under_test", section(type_name, **keys),
               ForwarderContext(debug_mode=debug_mode, host="contract-host",
                                state_dir=state_dir))


class ConsoleHarness:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.out = io.BytesIO()
        self.stream = io.TextIOWrapper(self.out, write_through=True)
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        # Here, in the test's own phase: pytest's capture swaps sys.stdout per phase.
        self.monkeypatch.setattr(sys, "stdout", self.stream)
        return build("console", {"queue_size": queue_size}, debug_mode, self.tmp_path)

    def delivered(self) -> int:
        return self.out.getvalue().count(b"\n")


class FileHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "out" / "metrics.jsonl"
        self.tmp_path = tmp_path

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        return build("file", {"path": str(self.path), "queue_size": queue_size}, debug_mode,
                     self.tmp_path)

    def delivered(self) -> int:
        return self.path.read_bytes().count(b"\n") if self.path.exists() else 0


class KafkaHarness:
    def __init__(self, tmp_path: Path, bootstrap: str) -> None:
        self.tmp_path = tmp_path
        self.bootstrap = bootstrap
        self.topic = f"contract-{uuid.uuid4().hex[:10]}"
        self._consumer: Consumer | None = None
        self._seen = 0

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        return build("kafka", {"kafka_broker": self.bootstrap, "kafka_topic": self.topic,
                               "format": "json", "linger_ms": 5, "queue_size": queue_size},
                     debug_mode, self.tmp_path)

    def delivered(self) -> int:
        if self._consumer is None:
            self._consumer = Consumer({"bootstrap.servers": self.bootstrap,
                                       "group.id": f"g-{self.topic}",
                                       "enable.auto.commit": False})
            # assign() is instant (a subscribe() rebalance takes ~20 s on Tansu); a topic not
            # yet created reads as empty until its first message.
            self._consumer.assign([TopicPartition(self.topic, p, 0) for p in range(4)])
        while True:
            message = self._consumer.poll(0.2)
            if message is None:
                return self._seen
            if message.error() is None:
                self._seen += 1

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


class UdpSink:
    """A statsd backend: a UDP socket whose lines a thread counts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.lines += self.sock.recv(65535).count(b"\n") + 1
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class RelayHarness:
    def __init__(self, tmp_path: Path, sink: UdpSink) -> None:
        self.tmp_path = tmp_path
        self.sink = sink

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        port = self.sink.sock.getsockname()[1]
        return build("statsd_relay", {"groups": [{"backends": [f"127.0.0.1:{port}:udp"]}],
                                      "queue_size": queue_size}, debug_mode, self.tmp_path)

    def delivered(self) -> int:
        return self.sink.lines


@pytest.fixture(scope="module")
def kafka_bootstrap_for_contract() -> Any:
    import os

    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


class TestConsole(AggregateContract):
    @pytest.fixture
    def harness(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConsoleHarness:
        return ConsoleHarness(tmp_path, monkeypatch)


class TestFile(AggregateContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> FileHarness:
        return FileHarness(tmp_path)


@pytest.mark.integration
class TestKafka(AggregateContract):
    @pytest.fixture
    def harness(self, tmp_path: Path, kafka_bootstrap_for_contract: str) -> Any:
        harness = KafkaHarness(tmp_path, kafka_bootstrap_for_contract)
        yield harness
        harness.close()


class TestStatsdRelay(RelayContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Any:
        sink = UdpSink()
        yield RelayHarness(tmp_path, sink)
        sink.close()
