"""Every command shown in README.md and docs/*.md works as written.

The commands are read from the documents' code blocks: a ``sh``/``bash``/``console`` block's
lines, or in any block the lines after a ``$ `` prompt (the lines below such a command are its
shown output). ``DOCUMENTED`` lists each one, by document and the start of its text, with the
scenario that runs it or the reason it cannot run here; a test fails when a document shows a
command not listed, or a listed one is no longer shown, so the list cannot drift.

Scenarios run the commands in a scratch directory laid out like a checkout (``tools``, ``etc``
and ``.venv`` linked in), through ``bash -c`` exactly as shown, except for the substitutions a
scenario names (a free port for 5090, a sample file for the operator's own ``/etc`` file)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.conftest import REPO

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}


@dataclass(frozen=True)
class Shown:
    """A command as a document shows it, with the output shown below it (if any)."""

    document: str
    command: str
    output: tuple[str, ...] = ()


@dataclass(frozen=True)
class Block:
    document: str
    language: str
    lines: tuple[str, ...]


def code_blocks(document: str) -> list[Block]:
    blocks: list[Block] = []
    language: str | None = None
    lines: list[str] = []
    for line in (REPO / document).read_text("utf-8").splitlines():
        fence = re.match(r"^```\s*(\S*)\s*$", line)
        if fence and language is None:
            language, lines = fence.group(1), []
        elif line.startswith("```") and language is not None:
            blocks.append(Block(document, language, tuple(lines)))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _logical_lines(lines: tuple[str, ...]) -> list[str]:
    """Lines with their backslash continuations joined, as the shell reads them."""
    joined: list[str] = []
    pending = ""
    for line in lines:
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        joined.append(pending + line)
        pending = ""
    return joined


def shown_commands() -> list[Shown]:
    shown: list[Shown] = []
    for document in DOCUMENTS:
        for block in code_blocks(document):
            if block.language == "python" and any("import" in line for line in block.lines):
                shown.append(Shown(document, "\n".join(block.lines)))
                continue
            lines = _logical_lines(block.lines)
            if any(line.startswith("$ ") for line in lines):
                command: str | None = None
                output: list[str] = []
                for line in lines + ["$ "]:
                    if line.startswith("$ "):
                        if command:
                            shown.append(Shown(document, command, tuple(output)))
                        command, output = line[2:], []
                    else:
                        output.append(line)
            elif block.language in SHELL_LANGUAGES:
                shown += [Shown(document, line.strip()) for line in lines
                          if line.strip() and not line.lstrip().startswith("#")]
    return shown


@dataclass(frozen=True)
class Skip:
    """Cannot run here; ``probe`` (run in the checkout, must exit 0) checks what it can."""

    reason: str
    probe: str | None = None


@dataclass(frozen=True)
class Run:
    scenario: str


# (document, start of the command) -> how it is covered. Keep in the documents' order.
DOCUMENTED: dict[tuple[str, str], Skip | Run] = {
    ("README.md", "bash tools/run.sh"): Skip(
        "runs until Ctrl-C on the fixed ports 5090 and 9092; tests/test_readme_commands.py runs "
        "it and sends a metric through it"),
    ("README.md", "bash tools/test.sh"): Skip("the whole test suite, this file included"),
    ("README.md", "echo -n 'api.hits:1"): Run("send-a-metric"),
    ("README.md", "printf 'api.hits:2"): Run("send-a-metric"),
    ("README.md", "echo -n '{\"metric_name\""): Run("send-a-metric"),
    ("README.md", "from pystatsd.client import StatsClient"): Run("send-a-metric"),
    ("README.md", "tools/build_deb.sh"): Skip(
        "builds the package as root with dpkg-buildpackage: tests/packaging",
        probe="test -x tools/build_deb.sh"),
    ("README.md", "tools/build_rpm.sh"): Skip(
        "builds the package with rpmbuild: tests/packaging", probe="test -x tools/build_rpm.sh"),
    ("README.md", "sudo apt install"): Skip("installs system-wide as root: tests/packaging"),
    ("README.md", "sudo dnf install"): Skip("installs system-wide as root, on RPM systems"),
    ("README.md", "sudo pystatsd --check-config"): Skip(
        "needs root and the installed package; the same check of the shipped file:",
        probe=".venv/bin/pystatsd --check-config etc/pystatsd.conf"),
    ("README.md", "sudo service pystatsd start"): Skip("needs root and the installed service"),
    ("README.md", "sudo service pystatsd reload"): Skip("needs root and the installed service"),
    ("README.md", "sudo service pystatsd status"): Skip("needs root and the installed service"),
    ("docs/graphite.md", ".venv/bin/python tools/convert_statsite_proxy.py"): Skip(
        "needs the operator's statsite-proxy config; tests/graphite/test_convert_statsite_proxy"
        ".py converts one and checks the ring",
        probe=".venv/bin/python tools/convert_statsite_proxy.py --help"),
    ("docs/kafka.md", ".venv/bin/python tools/kafka_tail.py"): Skip(
        "needs a Kafka broker holding the topic; tests/kafka read topics back with the same code",
        probe=".venv/bin/python tools/kafka_tail.py --help"),
    ("docs/packaging.md", "tools/build_deb.sh [OUTDIR]"): Skip(
        "builds the package as root: tests/packaging", probe="test -x tools/build_deb.sh"),
    ("docs/packaging.md", "tools/build_rpm.sh [OUTDIR]"): Skip(
        "builds the package with rpmbuild: tests/packaging", probe="test -x tools/build_rpm.sh"),
    ("docs/relay.md", ".venv/bin/python tools/stathasher.py -c relay.conf apple"): Run(
        "stathasher-example"),
    ("docs/relay.md", ".venv/bin/python tools/convert_statsrelay.py -o relay.conf jjneely"): Run(
        "relay-migration"),
    ("docs/relay.md", ".venv/bin/python tools/convert_statsrelay.py -o relay.conf lyft"): Run(
        "relay-migration"),
    ("docs/relay.md", ".venv/bin/python tools/convert_statsrelay.py -o relay.conf statsite"): Run(
        "relay-migration"),
    ("docs/relay.md", ".venv/bin/pystatsd --check-config relay.conf"): Run("relay-migration"),
    ("docs/relay.md", ".venv/bin/python tools/stathasher.py -c relay.conf < names.txt"): Run(
        "relay-migration"),
}


def entry_of(shown: Shown) -> tuple[str, str]:
    matches = [key for key in DOCUMENTED
               if key[0] == shown.document and shown.command.startswith(key[1])]
    assert len(matches) == 1, f"{shown.document}: {shown.command!r} matches {matches}"
    return matches[0]


def commands_of(scenario: str) -> list[Shown]:
    found = [s for s in shown_commands() if DOCUMENTED[entry_of(s)] == Run(scenario)]
    assert found, f"no documented command left for scenario {scenario}"
    return found


def test_every_documented_command_is_listed_and_every_listed_one_is_shown() -> None:
    shown = shown_commands()
    used = {entry_of(s) for s in shown}  # fails on a command no entry covers
    assert set(DOCUMENTED) - used == set(), "listed here but no longer shown in the docs"


@pytest.mark.parametrize("key", [k for k, v in DOCUMENTED.items() if isinstance(v, Skip)],
                         ids=lambda key: f"{key[0]}:{key[1]}")
def test_what_cannot_run_here_is_skipped_with_its_reason(key: tuple[str, str]) -> None:
    entry = DOCUMENTED[key]
    assert isinstance(entry, Skip)
    if entry.probe is not None:
        result = subprocess.run(["bash", "-c", entry.probe], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"probe {entry.probe!r}: {result.stderr}"
    pytest.skip(entry.reason)


def test_every_tool_with_a_shebang_is_executable_in_git() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s", "tools"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
    modes = {line.split("\t")[1]: line.split()[0] for line in listing.splitlines()}
    scripts = [path for path in modes if (REPO / path).read_bytes().startswith(b"#!")]
    assert "tools/stathasher.py" in scripts
    assert {path: modes[path] for path in scripts if modes[path] != "100755"} == {}


# -- running them ------------------------------------------------------------------------


@dataclass
class Checkout:
    """A scratch directory laid out like the repository for the commands' relative paths."""

    root: Path
    substitutions: dict[str, str] = field(default_factory=dict)

    def run(self, shown: Shown, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = shown.command
        for old, new in self.substitutions.items():
            command = command.replace(old, new)
        return subprocess.run(["bash", "-c", command], cwd=self.root, capture_output=True,
                              text=True, input=stdin, timeout=60)


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("tools", "etc"):
        (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(Path(sys.prefix))  # the venv these tests run in
    return Checkout(root)


def _series_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return record["name"], record["type"], tuple(sorted(record["tags"].items()))


def _wait_until_far_from_a_boundary(interval: float, margin: float) -> None:
    """So that every command's metrics land in one interval."""
    left = interval - time.time() % interval
    if left < margin:
        time.sleep(left + 0.05)


@pytest.mark.integration
def test_send_a_metric_gives_the_aggregates_the_readme_shows(
        checkout: Checkout, start_daemon: Callable[..., Any]) -> None:
    if shutil.which("nc") is None:
        pytest.skip("nc is not installed (Debian: netcat-openbsd), as the README says")
    interval = 600.0  # the final flush at SIGTERM closes it; a long one is never crossed
    daemon = start_daemon({"flush_interval": interval,
                           "agent": {"tags": {"source": "pystatsd-demo"}},
                           "forwarders": {"console": {}}})
    checkout.substitutions = {"5090": str(daemon.port)}
    commands = commands_of("send-a-metric")
    _wait_until_far_from_a_boundary(interval, margin=10)
    for shown in commands:
        if shown.command.startswith("from "):
            result = subprocess.run([sys.executable, "-c", shown.command.replace(
                "5090", str(daemon.port))], capture_output=True, text=True, timeout=60)
        else:
            result = checkout.run(shown)
        assert result.returncode == 0, (shown.command, result.stderr)
    time.sleep(0.5)  # UDP: let the last datagrams be read before the stop closes the socket
    assert daemon.stop() == 0
    printed = {_series_key(r): r for r in daemon.records()}

    [example] = [b for b in code_blocks("README.md") if any(
        re.match(r"^p\d+ @\d+ key=", line) for line in b.lines)]
    hostname = socket.gethostname()
    for line in example.lines:
        _, _, kafka_key, text = line.split(" ", 3)
        shown_record = orjson.loads(text)
        assert kafka_key == "key=" + ",".join(  # the key shown is the record's series
            [shown_record["name"], *(f"{k}={v}" for k, v in sorted(shown_record["tags"].items()))])
        if "host" in shown_record["tags"]:
            shown_record["tags"]["host"] = hostname  # the README's machine is web1
        key = _series_key(shown_record)
        assert key in printed, f"README shows {key}; the daemon printed {sorted(printed)}"
        record = printed[key]
        stats, shown_stats = dict(record["stats"]), dict(shown_record["stats"])
        if "rate" in shown_stats:  # per second of the interval, whose length differs here
            assert stats.pop("rate") == pytest.approx(stats["count"] / record["interval"])
            shown_stats.pop("rate")
            assert shown_record["stats"]["rate"] == pytest.approx(
                shown_stats["count"] / shown_record["interval"])
        assert stats == shown_stats, key


RELAY_CONF = {"mode": "relay", "forwarders": {"relay": {"type": "statsd_relay", "groups": [
    {"name": "main", "hash": "shard_map", "backends": [
        "10.0.0.1:8125:tcp", "10.0.0.2:8125:udp", "10.0.0.1:8125:tcp", "10.0.0.3:8126:tcp"]},
    {"name": "duplicate0", "hash": "shard_map", "backends": ["10.9.0.1:8125:udp"],
     "filter": "^ban"}]}}}
"""The lyft/statsrelay config of lyft's own test vectors, which the relay.md example uses."""


def test_stathasher_prints_what_relay_md_shows(checkout: Checkout) -> None:
    (checkout.root / "relay.conf").write_text(yaml.safe_dump(RELAY_CONF))
    [shown] = commands_of("stathasher-example")
    result = checkout.run(shown)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == list(shown.output)


def test_the_relay_migration_commands_run_in_order(checkout: Checkout) -> None:
    lyft = {"statsd": {"bind": "0.0.0.0:8125", "shard_map": ["10.0.0.1:8125", "10.0.0.2:8125"]}}
    (checkout.root / "statsrelay.json").write_text(orjson.dumps(lyft).decode())
    (checkout.root / "config").mkdir()
    (checkout.root / "config" / "servers.conf").write_text("10.0.0.1:8125 1\n10.0.0.2:8125 1\n")
    (checkout.root / "names.txt").write_text("api.hits\nreq.time\n")
    checkout.substitutions = {"/etc/statsrelay.json": "statsrelay.json"}  # the operator's own
    conf = checkout.root / "relay.conf"
    for shown in commands_of("relay-migration"):
        conf_before = conf.read_bytes() if conf.exists() else None
        result = checkout.run(shown)
        assert result.returncode == 0, (shown.command, result.stderr)
        if "convert_statsrelay.py" in shown.command:
            assert conf.read_bytes() != conf_before
            assert yaml.safe_load(conf.read_text())["mode"] == "relay"
        elif "--check-config" in shown.command:
            assert result.stdout == "relay.conf: ok\n"
        else:  # stathasher over names.txt: one owner per name in the one group
            lines = result.stdout.splitlines()
            assert [line.split(" ")[0] for line in lines] == ["key=api.hits", "key=req.time"]
            assert all(" backend=10.0.0." in line for line in lines), lines


def test_the_docs_run_python_tools_with_the_venvs_python() -> None:
    # run directly, a tool gets the system Python, which lacks pystatsd's dependencies (mmh3,
    # confluent-kafka): the skipped commands are held to it too
    for shown in shown_commands():
        program = shown.command.split()[0]
        assert not (program.startswith("tools/") and program.endswith(".py")), shown
