"""tools/convert_statsite_proxy.py: statsite-proxy's INI and servers file -> a pystatsd config
whose statsite_proxy forwarder places every key where statsite-proxy's ring does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from forwarders import ForwarderContext, load_forwarder_class
from pystatsd.config import build_config

CONVERT = Path(__file__).resolve().parents[2] / "tools" / "convert_statsite_proxy.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CONVERT), *args], capture_output=True,
                          text=True, timeout=60)


def test_ini_and_servers_file_convert_to_the_same_ring(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "servers.conf").write_text(
        "10.0.0.1:8125\t100\n10.0.0.2:8125\t100\n10.0.0.3:8125\t200\n")
    ini = tmp_path / "statsite-proxy.conf"
    ini.write_text("[statsite-proxy]\ntcp_port = 8160\nudp_port = 8161\n"
                   "servers = conf/servers.conf\nlog_level = WARN\ndaemonize = 1\n")
    result = run(str(ini))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["listeners"] == [{"protocol": "tcp", "port": 8160, "format": "statsite"},
                                   {"protocol": "udp", "port": 8161, "format": "statsite"}]
    assert config["mode"] == "relay" and config["logging"] == {"level": "WARNING"}
    assert "daemonize" in result.stderr and "working directory" in result.stderr
    section = build_config(config)["forwarders"]["statsite_proxy"]
    proxy = load_forwarder_class("statsite_proxy")("statsite_proxy", section,
                                                  ForwarderContext(state_dir=tmp_path))
    # the docs/relay.md ketama vectors for this servers file
    owners = {key: section["servers"][proxy.owner(key.encode())]["address"]
              for key in ("foo.bar", "a.b.c", "servers.web1.cpu", "api.requests", "x")}
    assert owners == {"foo.bar": "10.0.0.3:8125", "a.b.c": "10.0.0.2:8125",
                      "servers.web1.cpu": "10.0.0.3:8125", "api.requests": "10.0.0.2:8125",
                      "x": "10.0.0.2:8125"}


def test_what_cannot_be_converted_is_refused_with_one_line(tmp_path: Path) -> None:
    ini = tmp_path / "p.conf"
    ini.write_text("[other]\nport = 1\n")
    result = run(str(ini))
    assert result.returncode == 2 and "[statsite-proxy]" in result.stderr
    ini.write_text("[statsite-proxy]\nservers = missing.conf\n")
    assert run(str(ini)).returncode == 2
    (tmp_path / "bad.conf").write_text("10.0.0.1:8125 0\n")
    result = run(str(ini), "--servers", str(tmp_path / "bad.conf"))
    assert result.returncode == 2 and "weight" in result.stderr
