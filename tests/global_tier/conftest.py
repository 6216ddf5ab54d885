"""A real Kafka broker for the global-tier tests (``KAFKA_BOOTSTRAP`` when set, else the
embedded Tansu broker), and global members run as real daemon processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from global_helpers import Member

from forwarders.kafka.embedded_broker import EmbeddedBroker


@pytest.fixture(scope="session")
def global_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def global_topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"input_topic": f"partials-{tag}", "output_topic": f"global-{tag}",
            "group_id": f"group-{tag}"}


@pytest.fixture
def start_member(tmp_path: Path, global_bootstrap: str,
                 global_topics: dict[str, str]) -> Iterator[Callable[..., Member]]:
    started: list[Member] = []

    def start(name: str, **settings: Any) -> Member:
        config = {
            "mode": "global",
            "flush_interval": settings.pop("flush_interval"),
            "timer_exact_samples": settings.pop("timer_exact_samples", 1000),
            "state_dir": str(tmp_path),
            "logging": {"level": "INFO"},
            "global": {"kafka_broker": global_bootstrap, "transactional_id": name,
                       "session_timeout": 6, **global_topics, **settings},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        member = Member(path, tmp_path / f"{name}.log")
        started.append(member)
        return member

    yield start
    for member in started:
        member.stop()
