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
    ({"bind_prot": 5090}, "bind_prot: unknown key; did you mean 'bind_port'?"),
    ({"bind_port": "5090"}, "bind_port: '5090' is not of type 'integer'"),
    ({"bind_port": 70000}, "bind_port: 70000 is greater than the maximum of 65535"),
    ({"flush_interval": 0}, "flush_interval: 0 is less than or equal to the minimum of 0"),
    ({"mode": "proxy"}, "mode: 'proxy' is not one of: aggregate, relay"),
    ({"agent": {"tagz": {}}}, "agent.tagz: unknown key; did you mean 'tags'?"),
    ({"agent": {"labels": {}}}, "agent.labels: unknown key (known: tags)"),
    ({"agent": {"tags": {"env": ["a"]}}}, "agent.tags.env: ['a'] is not of type"),
    ({"listeners": [{"port": 1}]}, "listeners[0].protocol: required"),
    ({"forwarders": {"nope": {}}}, "forwarders.nope.type: unknown forwarder type 'nope'; known: "),
    ({"forwarders": {"file": {}}}, "forwarders.file.path: required"),
    ({"forwarders": {"console": {"colour": True}}}, "forwarders.console.colour: unknown key"),
    ({"forwarders": {"console": {"streem": "stderr"}}},
     "forwarders.console.streem: unknown key; did you mean 'stream'?"),
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


def test_an_unknown_key_far_from_every_known_one_points_to_the_reference() -> None:
    [error] = errors_of({"zzyzx": 1})
    assert error.startswith("zzyzx: unknown key (none is close; see README")
    assert "bind_port" not in error  # not a wall of all the daemon's keys
    [numeric] = errors_of({1: "x"})  # YAML `1: x`: a key, not a list index
    assert numeric.startswith("1: unknown key")


def test_forwarder_sections_are_checked_even_when_the_top_level_is_wrong() -> None:
    errors = errors_of({"bind_port": "x", "forwarders": {"file": {}, "out": {"type": "nope"}}})
    assert [e.split(":")[0] for e in errors] == [
        "bind_port", "forwarders.file.path", "forwarders.out.type"]


def test_top_level_must_be_a_mapping() -> None:
    assert errors_of(["a"]) == ["(top level): must be a mapping of keys to values"]


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "absent.conf")
    assert missing.value.errors[0].startswith("cannot read:")
    assert missing.value.source == str(tmp_path / "absent.conf")
    bad = tmp_path / "bad.conf"
    bad.write_text("bind_port: [1\n")
    with pytest.raises(ConfigError) as malformed:
        load_config(bad)
    assert "not valid YAML" in malformed.value.errors[0]
    assert malformed.value.errors[0].startswith("line ")
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"bind_port: \xff\n")
    with pytest.raises(ConfigError) as undecodable:
        load_config(binary)
    assert undecodable.value.errors[0].startswith("not UTF-8 text")


def load_errors(tmp_path: Path, text: str) -> list[str]:
    conf = tmp_path / "p.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    assert caught.value.source == str(conf)  # the daemon's "reload refused" line names it
    return caught.value.errors


def test_a_syntax_error_points_at_where_the_broken_construct_starts(tmp_path: Path) -> None:
    # PyYAML's own position for an unclosed quote is where it gave up: the end of the file
    text = "".join(f"key{n}: {n}\n" for n in range(1, 6)) + 'bad: "unclosed\n' + "x: 1\n" * 7
    [error] = load_errors(tmp_path, text)
    assert error.startswith("line 6: not valid YAML: a quoted scalar started here (column 6)")
    assert error.endswith("at line 14, column 1")


@pytest.mark.parametrize(("text", "expected"), [
    ("bind_port: 1\nmode: \x07\n", "line 2: not valid YAML: character #x0007 is not allowed"),
    ("a:\n  b: 1\n c: 2\n", "line 1: not valid YAML: a block mapping started here (column 1); "
     "expected <block end>, but found '<block mapping start>' at line 3, column 2"),
    ("mode: !custom relay\n", "line 1: not valid YAML: could not determine a constructor for "
     "the tag '!custom' (column 7)"),
])
def test_every_yaml_error_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    assert load_errors(tmp_path, text) == [expected]


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    text = ("bind_port: 8125\nflush_interval: 5\nbind_port: 5090\n"
            "forwarders:\n  file:\n    path: /tmp/a\n    path: /tmp/b\n")
    assert load_errors(tmp_path, text) == [
        "bind_port: duplicate key at line 3 (first at line 1); only one may be given",
        "forwarders.file.path: duplicate key at line 7 (first at line 6); only one may be given"]


def test_a_duplicate_on_one_line_is_placed_by_column(tmp_path: Path) -> None:
    assert load_errors(tmp_path, "forwarders: {console: {}, console: {}}\n") == [
        "forwarders.console: duplicate key at line 1, column 27 (first at line 1, column 14); "
        "only one may be given"]


def test_duplicates_are_reported_with_the_schema_errors(tmp_path: Path) -> None:
    errors = load_errors(tmp_path, "mode: relay\nmode: aggregate\nflush_intervall: 5\n")
    assert [e.split(":")[0] for e in errors] == ["mode", "flush_intervall"]


def test_a_merge_key_overridden_beside_it_is_not_a_duplicate(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("forwarders:\n  a: &common {type: console, queue_size: 8}\n"
                    "  b:\n    <<: *common\n    queue_size: 16\n")
    assert load_config(conf)["forwarders"]["b"]["queue_size"] == 16


@pytest.mark.parametrize("text", ["", "\n", "# every line commented out\n# bind_port: 1\n"])
def test_an_empty_file_is_refused_not_taken_for_defaults(tmp_path: Path, text: str) -> None:
    # a truncated file reloaded would otherwise swap the real forwarders for the console one
    assert load_errors(tmp_path, text) == [
        "(top level): the file has no settings; write {} to run on every default"]


def test_an_explicit_empty_mapping_means_every_default(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("{}\n")
    assert load_config(conf) == build_config({})


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pystatsd", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_check_config_exits_1_and_names_every_bad_key(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("bind_port: x\nforwarders:\n  file: {}\n")
    result = run_cli("--check-config", str(conf))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"{conf}: bind_port: 'x' is not of type 'integer'",
                     f"{conf}: forwarders.file.path: required"]


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
    assert lines == [f"{conf}: flush_intervall: unknown key; did you mean 'flush_interval'?"]


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("pystatsd ")


# -- validation in a forked child (what the daemon does, to keep jsonschema out of its RSS) --
VALID = {"flush_interval": 5, "forwarders": {"k": {"type": "kafka", "kafka_topic": "m"}}}
INVALID = {"flush_intervl": 5, "percentiles": [101],
           "forwarders": {"k": {"type": "kafka", "bogus": 1}}}


@pytest.fixture
def in_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation in a child, as in a daemon that has never imported jsonschema (the test
    process has)."""
    import pystatsd.config as config_module

    monkeypatch.setattr(config_module, "_in_child", True)
    monkeypatch.setattr(config_module, "_jsonschema_loaded", lambda: False)


def test_a_config_validated_in_a_child_is_the_one_validated_here(in_child: None) -> None:
    import pystatsd.config as config_module

    assert config_module._build_in_child(VALID, "f")[0] == "config"
    in_process = config_module._build_config(VALID, "f")
    assert build_config(VALID, "f") == in_process
    assert in_process["forwarders"]["k"]["kafka_topic"] == "m"
    assert in_process["flush_interval"] == 5


def test_the_errors_found_in_a_child_are_the_ones_found_here(in_child: None) -> None:
    import pystatsd.config as config_module

    with pytest.raises(ConfigError) as here:
        config_module._build_config(INVALID, "f")
    kind, lines = config_module._build_in_child(INVALID, "f")
    assert (kind, lines) == ("errors", here.value.errors)
    with pytest.raises(ConfigError) as through_child:
        build_config(INVALID, "f")
    assert through_child.value.errors == here.value.errors
    assert through_child.value.source == "f"
    assert any("did you mean 'flush_interval'" in line for line in lines)


def test_a_child_that_fails_leaves_the_validation_to_this_process(
        in_child: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import pystatsd.config as config_module

    real = config_module._build_config
    parent = __import__("os").getpid()

    def broken_in_child(raw: object, source: str) -> dict:
        if __import__("os").getpid() != parent:
            raise RuntimeError("a bug in the child")
        return real(raw, source)

    monkeypatch.setattr(config_module, "_build_config", broken_in_child)
    assert config_module._build_in_child(VALID, "f")[0] == "failed"
    assert build_config(VALID, "f") == real(VALID, "f")
