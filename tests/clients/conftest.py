"""Real statsd clients, unmodified: the Python ones from the test extras, the Node ones
(``hot-shots``, ``node-statsd``) installed from npm under build/npm-clients when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NPM_PREFIX = REPO / "build" / "npm-clients"
NODE_CLIENTS = ("hot-shots", "node-statsd")


def ensure_node_clients() -> Path:
    """The node_modules folder holding every package of ``NODE_CLIENTS``."""
    modules = NPM_PREFIX / "node_modules"
    if not all((modules / name / "package.json").exists() for name in NODE_CLIENTS):
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.skip("node/npm not installed: cannot run the Node clients")
        result = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund",
                                 "--prefix", str(NPM_PREFIX), *NODE_CLIENTS],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"npm install {' '.join(NODE_CLIENTS)} failed: {result.stderr[-500:]}")
    return modules


@pytest.fixture
def run_node() -> Any:
    """Run a Node script with the npm clients importable; fail with its stderr if it fails."""
    modules = ensure_node_clients()

    def run(script: str) -> None:
        node = shutil.which("node")
        assert node is not None
        result = subprocess.run([node, "-e", script], capture_output=True, text=True,
                                timeout=60, env={**os.environ, "NODE_PATH": str(modules)})
        assert result.returncode == 0, result.stderr

    return run


def by_series(records: list[dict[str, Any]]) -> dict[tuple[str, str, tuple[Any, ...]], Any]:
    """Flushed console records keyed by (name, type, sorted tags), for user series only."""
    return {(r["name"], r["type"], tuple(sorted(r["tags"].items()))): r["stats"]
            for r in records if "name" in r and not r["name"].startswith("pystatsd.")}


@pytest.fixture(scope="session")
def embedded_kafka() -> Iterator[str]:
    """A real Kafka broker on loopback (the embedded Tansu the forwarder itself runs when it
    has no kafka_broker); its bootstrap address."""
    from forwarders.kafka.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap
