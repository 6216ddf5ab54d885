"""Migration in one command: each relay's own config converts to a pystatsd config under which
stathasher reports the owners the original relay's published vectors give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.relay.conftest import REPO
from tests.relay.test_hashing import CONNTRACK, JJNEELY_NODES

CONVERT = REPO / "tools" / "convert_statsrelay.py"
STATHASHER = REPO / "tools" / "stathasher.py"


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          input=stdin, timeout=60, cwd=REPO)


def _convert(tmp_path: Path, *args: str) -> tuple[Path, dict, str]:
    out = tmp_path / "pystatsd.conf"
    result = _run(str(CONVERT), "-o", str(out), *args)
    assert result.returncode == 0, result.stderr
    return out, yaml.safe_load(out.read_text()), result.stderr


def _owners(config: Path, *names: str) -> dict[str, list[str]]:
    result = _run(str(STATHASHER), "-c", str(config), stdin="\n".join(names) + "\n")
    assert result.returncode == 0, result.stderr
    owners: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        fields = dict(field.split("=", 1) for field in line.split(" "))
        owners.setdefault(fields["key"], []).append(fields.get("backend", "skipped"))
    return owners


def test_jjneely_command_line_converts_to_identical_jump_routing(tmp_path):
    argv = ["statsrelay", "-port", "9125", "-bind=10.1.2.3", "-packetlen", "1400",
            *[f"{node}:2003" for node in JJNEELY_NODES]]
    path, config, _ = _convert(tmp_path, "jjneely", "--", *argv)
    assert config["mode"] == "relay" and config["bind_port"] == 9125
    assert config["bind_address"] == "10.1.2.3"
    owners = _owners(path, "foobar", "suebob.foo.honey.i.shrunk.the.kids", CONNTRACK.decode())
    assert owners == {"foobar": ["graphite-data043-g5:2003:udp"],
                      "suebob.foo.honey.i.shrunk.the.kids": ["graphite-data048-g5:2003:udp"],
                      CONNTRACK.decode(): ["graphite014-g5:2003:udp"]}


def test_jjneely_instances_weigh_and_metrics_prefix_is_hashed(tmp_path):
    path, config, _ = _convert(tmp_path, "jjneely", "-metrics-prefix", "dc1",
                               "-metrics-tags", "env:prod", "-sendproto", "TCP",
                               "a:8125:1", "a:8125:2", "b:8125")
    group = config["forwarders"]["relay"]["groups"][0]
    assert group["prefix"] == "dc1." and group["hash_rewritten_name"] is True
    assert group["append_tags"] == "env:prod"
    assert [b["protocol"] for b in group["backends"]] == ["tcp"] * 3
    from forwarders.statsd_relay.hashing import JumpRouter
    router = JumpRouter([0, 0, 1])  # a listed twice: two buckets, one backend
    names = [f"m{i}" for i in range(50)]
    owners = _owners(path, *names)
    for name in names:
        expected = ["a:8125:tcp", "b:8125:tcp"][router.owner(f"dc1.{name}".encode())]
        assert owners[name] == [expected]


def test_lyft_json_converts_to_identical_shard_map_and_groups(tmp_path):
    lyft = {"statsd": {
        "bind": "0.0.0.0:8125", "max_send_queue": 1048576, "validate": True,
        "shard_map": ["10.0.0.1:8125", "10.0.0.2:8125:udp", "10.0.0.1:8125", "10.0.0.3:8126"],
        "duplicate_to": {"shard_map": ["10.9.0.1:8125:udp"], "prefix": "mirror.",
                         "input_filter": "^ban", "sampling_threshold": 10},
    }}
    source = tmp_path / "statsrelay.json"
    source.write_text(json.dumps(lyft))
    path, config, warnings = _convert(tmp_path, "lyft", str(source))
    assert "sampling_threshold" in warnings
    assert config["forwarders"]["relay"]["queue_bytes"] == 1048576
    owners = _owners(path, "apple", "banana", "orange", "lemon")
    assert owners == {  # murmur3 shards 2, 3, 0, 1 (lyft's test vectors)
        "apple": ["10.0.0.1:8125:tcp", "skipped"],
        "banana": ["10.0.0.3:8126:tcp", "10.9.0.1:8125:udp"],
        "orange": ["10.0.0.1:8125:tcp", "skipped"],
        "lemon": ["10.0.0.2:8125:udp", "skipped"],
    }


def test_statsite_proxy_servers_file_converts_to_identical_ketama(tmp_path):
    servers = tmp_path / "servers.conf"
    servers.write_text("# ring\n10.0.0.1:8125\t100\n10.0.0.2:8125 100\n10.0.0.3:8125 200\n")
    path, config, _ = _convert(tmp_path, "statsite-proxy", str(servers))
    owners = _owners(path, "foo.bar", "a.b.c", "servers.web1.cpu", "api.requests", "x")
    assert {k: v[0].split(":")[0] for k, v in owners.items()} == {
        "foo.bar": "10.0.0.3", "a.b.c": "10.0.0.2", "servers.web1.cpu": "10.0.0.3",
        "api.requests": "10.0.0.2", "x": "10.0.0.2"}


def test_converter_refuses_what_it_cannot_convert(tmp_path):
    bad = _run(str(CONVERT), "jjneely", "host-without-port")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    unknown = _run(str(CONVERT), "jjneely", "-frobnicate", "1", "a:1")
    assert unknown.returncode == 2 and "frobnicate" in unknown.stderr
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    result = _run(str(CONVERT), "lyft", str(empty))
    assert result.returncode == 2 and "statsd" in result.stderr


def test_every_key_not_converted_is_one_warning_naming_it(tmp_path):
    # a misspelt input_filter would leave the mirror group unfiltered: every metric duplicated
    lyft = {"statsd": {"bind": "0.0.0.0:8125", "shard_map": ["10.0.0.1:8125"],
                       "max_sendqueue": 1,
                       "duplicate_to": [{"shard_map": ["10.9.0.1:8125"], "input_filtr": "^ban"}]},
            "carbon": {"bind": "0.0.0.0:2003"}}
    source = tmp_path / "statsrelay.json"
    source.write_text(json.dumps(lyft))
    _, config, stderr = _convert(tmp_path, "lyft", str(source))
    assert stderr.splitlines() == [
        "warning: carbon: not converted (only the \"statsd\" section is)",
        "warning: statsd.max_sendqueue: unknown key, not converted "
        "(did you mean 'max_send_queue'?)",
        "warning: statsd.duplicate_to[0].input_filtr: unknown key, not converted "
        "(did you mean 'input_filter'?)"]
    assert "filter" not in config["forwarders"]["relay"]["groups"][1]


def test_strict_refuses_a_conversion_that_would_leave_settings_behind(tmp_path):
    source = tmp_path / "statsrelay.json"
    source.write_text(json.dumps({"statsd": {"shard_map": ["10.0.0.1:8125"], "tcp_cork": True}}))
    out = tmp_path / "pystatsd.conf"
    result = _run(str(CONVERT), "--strict", "-o", str(out), "lyft", str(source))
    assert result.returncode == 1
    assert "warning: statsd.tcp_cork: no equivalent, ignored" in result.stderr
    assert "--strict: 1 setting(s) not converted, nothing written" in result.stderr
    assert not out.exists()
    source.write_text(json.dumps({"statsd": {"shard_map": ["10.0.0.1:8125"]}}))
    clean = _run(str(CONVERT), "--strict", "-o", str(out), "lyft", str(source))
    assert clean.returncode == 0 and clean.stderr == ""
    assert out.exists()
