"""A real Kafka broker for the global-tier tests (``KAFKA_BOOTSTRAP`` when set, else the
embedded Tansu broker), and global members run as real daemon processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarders.kafka.embedded_broker import EmbeddedBroker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def global_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


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
