"""Config validation: what an operator sees for each kind of mistake, and what defaults mean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pystatsd.config import ConfigError, build_config, listeners, load_config

REPO = Path(__file__).resolve().parent.parent


def errors_of(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    return caught.value.errors


def test_empty_config_takes_every_default() -> None:
    config = build_config({})
    assert config["bind_address"] == "127.0.0.1"
    assert config["bind_port"] == 5090
    assert config["flush_interval"] == 10
    assert config["debug_mode"] is False
    assert config["forwarders"] == {"console": {"queue_size": 64, "stream": "stdout"}}
    assert config["self_metrics"] == {"enabled": True, "prefix": "pystatsd."}
    assert config["percentiles"] == [50, 90, 95, 99]


def test_old_daemon_config_is_accepted_unchanged() -> None:
    old = {
        "bind_address": "127.0.0.1",
        "bind_port": 5090,
        "debug_mode": True,
        "agent": {"tags": {"env": "stage", "dc": "eu1"}},
        "forwarders": {"console": {}},
    }
    config = build_config(old)
    assert config["agent"]["tags"] == {"env": "stage", "dc": "eu1"}
    assert config["debug_mode"] is True


def test_default_listeners_are_udp_and_tcp_on_bind_address() -> None:
    config = build_config({"bind_address": "::1", "bind_port": 8125})
    specs = listeners(config)
    assert [(s["protocol"], s["address"], s["port"]) for s in specs] == [
        ("udp", "::1", 8125), ("tcp", "::1", 8125)]
    assert specs[0]["max_datagram_bytes"] == 65535


def test_explicit_listener_inherits_bind_address() -> None:
    config = build_config({"bind_address": "0.0.0.0",
                           "listeners": [{"protocol": "udp", "port": 8125}]})
    assert [(s["protocol"], s["address"], s["port"]) for s in listeners(config)] == [
        ("udp", "0.0.0.0", 8125)]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"bind_prot": 5090}, "bind_prot: unknown key (known: "),
    ({"bind_port": "5090"}, "bind_port: '5090' is not of type 'integer'"),
    ({"bind_port": 70000}, "bind_port: 70000 is greater than the maximum of 65535"),
    ({"flush_interval": 0}, "flush_interval: 0 is less than or equal to the minimum of 0"),
    ({"mode": "proxy"}, "mode: 'proxy' is not one of: aggregate, relay"),
    ({"agent": {"tagz": {}}}, "agent.tagz: unknown key (known: tags)"),
    ({"agent": {"tags": {"env": ["a"]}}}, "agent.tags.env: ['a'] is not of type"),
    ({"listeners": [{"port": 1}]}, "listeners[0].protocol: required"),
    ({"forwarders": {"nope": {}}}, "forwarders.nope.type: unknown forwarder type 'nope'; known: "),
    ({"forwarders": {"file": {}}}, "forwarders.file.path: required"),
    ({"forwarders": {"console": {"colour": True}}}, "forwarders.console.colour: unknown key"),
    ({"forwarders": {"out": {"type": "console", "queue_size": 0}}},
     "forwarders.out.queue_size: 0 is less than the minimum of 1"),
])
def test_each_mistake_is_reported_with_its_key(raw: dict[str, object], expected: str) -> None:
    errors = errors_of(raw)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors[0]


def test_every_error_is_reported_not_just_the_first() -> None:
    errors = errors_of({"bind_port": -1, "debug_mode": "yes", "extra": 1})
    assert [e.split(":")[0] for e in errors] == ["bind_port", "debug_mode", "extra"]


def test_top_level_must_be_a_mapping() -> None:
    assert errors_of(["a"]) == ["(top level): must be a mapping of keys to values"]


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "absent.conf")
    assert missing.value.errors[0].startswith("cannot read:")
    bad = tmp_path / "bad.conf"
    bad.write_text("bind_port: [1\n")
    with pytest.raises(ConfigError) as malformed:
        load_config(bad)
    assert "not valid YAML" in malformed.value.errors[0]
    assert malformed.value.errors[0].startswith("line ")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    assert load_config(empty)["bind_port"] == 5090


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pystatsd", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_check_config_exits_1_and_names_every_bad_key(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("bind_port: x\nforwarders:\n  file: {}\n")
    result = run_cli("--check-config", str(conf))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"{conf}: bind_port: 'x' is not of type 'integer'"]
    conf.write_text("forwarders:\n  file: {}\n")
    result = run_cli("--check-config", str(conf))
    assert result.stderr.strip().splitlines() == [f"{conf}: forwarders.file.path: required"]


def test_check_config_exits_0_on_the_shipped_config() -> None:
    result = run_cli("--check-config", str(REPO / "etc" / "pystatsd.conf"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": ok")


def test_start_with_bad_config_stops_with_one_line_per_key(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("flush_intervall: 5\n")
    result = run_cli("-c", str(conf))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{conf}: flush_intervall: unknown key (known: ")
    assert "flush_interval," in lines[0]


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("pystatsd ")
