"""Third-party forwarders through the ``pystatsd.forwarders`` entry-point group: a sample
distribution (tests/plugin_sample) built and installed by pip, passing the contract suite and
running in the real daemon; names claimed twice are refused, naming both sources."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarders import ForwarderClash, ForwarderContext, discover, load_forwarder_class
from forwarders.contract import AggregateContract
from tests.conftest import REPO

pytestmark = pytest.mark.integration

SAMPLE = REPO / "tests" / "plugin_sample"


@pytest.fixture(scope="module")
def installed_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample distribution, built from its source by pip (no network, no index) into a
    directory of its own: a site directory any interpreter can put on its path."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(SAMPLE, source)  # setuptools writes build files next to the source
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                    "--target", str(target), str(source)], check=True, timeout=120)
    return target


def fake_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees one: a dist-info directory."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[pystatsd.forwarders]\n{lines}")


def pystatsd(*args: str, pythonpath: tuple[Path, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (REPO, *pythonpath)))}
    return subprocess.run([sys.executable, "-m", "pystatsd", *args], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.fixture
def on_path(installed_sample: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(installed_sample))
    importlib.invalidate_caches()
    return installed_sample


class SampleHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "sample.jsonl"
        self.tmp_path = tmp_path

    def make(self, debug_mode: bool = False, queue_size: int = 64) -> Any:
        cls = load_forwarder_class("sample_jsonl")
        return cls("sample", {"path": str(self.path), "queue_size": queue_size},
                   ForwarderContext(debug_mode=debug_mode, state_dir=self.tmp_path))

    def delivered(self) -> int:
        return self.path.read_text().count("\n") if self.path.exists() else 0


class TestSamplePlugin(AggregateContract):
    """The contract suite, run on a forwarder found through its entry point."""

    @pytest.fixture
    def harness(self, on_path: Path, tmp_path: Path) -> SampleHarness:
        return SampleHarness(tmp_path)


def test_list_forwarders_names_the_distribution(installed_sample: Path) -> None:
    listed = pystatsd("--list-forwarders", pythonpath=(installed_sample,))
    assert listed.returncode == 0, listed.stderr
    rows = dict(line.split(None, 1) for line in listed.stdout.splitlines())  # names padded
    assert rows["sample_jsonl"] == ("pystatsd-sample-forwarder 0.1 "
                                    "(pystatsd_sample_forwarder:SampleForwarder)")
    assert rows["console"] == "built-in (forwarders.console:ConsoleForwarder)"


def test_the_real_daemon_runs_an_installed_plugin(installed_sample: Path, start_daemon: Any,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "plugin-out.jsonl"
    daemon = start_daemon({"flush_interval": 3600, "self_metrics": {"enabled": False},
                           "forwarders": {"mine": {"type": "sample_jsonl", "path": str(out)}}},
                          pythonpath=(str(installed_sample),))
    daemon.send_udp(b"plugin.hits:3|c|#env:x")
    daemon.send_tcp(b"plugin.hits:4|c|#env:x\n")
    daemon.wait_for_log("listening on tcp")
    import time

    time.sleep(0.5)  # both payloads read before the stop's final flush
    assert daemon.stop() == 0, "".join(daemon.stderr)
    records = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert [(r["name"], r["tags"], r["stats"]["count"]) for r in records] == [
        ("plugin.hits", {"env": "x"}, 7.0)]


def test_an_entry_point_named_like_a_built_in_is_refused(tmp_path: Path,
                                                         on_path: Path) -> None:
    fake_distribution(tmp_path, "shadowing-console", {"console": "elsewhere:Console"})
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.invalidate_caches()
        with pytest.raises(ForwarderClash) as refused:
            load_forwarder_class("console")
        assert str(refused.value) == (
            "forwarder type 'console' is registered more than once and is refused: built-in "
            "(forwarders.console:ConsoleForwarder) and shadowing-console 1.0 "
            "(elsewhere:Console)")
        assert "console" in discover().clashes
        assert "sample_jsonl" in discover().available  # one clash refuses one name only
    finally:
        sys.path.remove(str(tmp_path))


def test_two_distributions_claiming_one_name_stop_a_config_that_uses_it(
        tmp_path: Path, installed_sample: Path) -> None:
    other = tmp_path / "other-site"
    fake_distribution(other, "another-sample", {"sample_jsonl": "another:Forwarder"})
    config = tmp_path / "pystatsd.conf"
    config.write_text("forwarders:\n  out:\n    type: sample_jsonl\n    path: /tmp/x\n")
    checked = pystatsd("--check-config", str(config), pythonpath=(installed_sample, other))
    assert checked.returncode == 1
    assert checked.stderr.strip() == (
        f"{config}: forwarders.out.type: forwarder type 'sample_jsonl' is registered more than "
        "once and is refused: pystatsd-sample-forwarder 0.1 "
        "(pystatsd_sample_forwarder:SampleForwarder) and another-sample 1.0 "
        "(another:Forwarder)")
    listed = pystatsd("--list-forwarders", pythonpath=(installed_sample, other))
    assert listed.returncode == 1
    rows = dict(line.split(None, 1) for line in listed.stdout.splitlines())  # names padded
    assert rows["sample_jsonl"].startswith("REFUSED: forwarder type 'sample_jsonl' is registered")
