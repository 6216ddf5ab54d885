#!/usr/bin/env python3
"""Convert statsite-proxy's configuration (its INI file and the servers file it names) into a
pystatsd config that shards the same commands to the same statsite servers.

  convert_statsite_proxy.py statsite-proxy.conf [--servers servers.conf] [-o pystatsd.yaml]

statsite-proxy reads the ``[statsite-proxy]`` section: ``port`` / ``tcp_port`` (TCP),
``udp_port``, ``servers`` (a path, which statsite-proxy opens relative to its working
directory: here relative to the INI file's directory unless ``--servers`` says otherwise),
``log_level``, ``daemonize``, ``pid_file``. The result is one TCP and one UDP listener of
format ``statsite`` on those ports, in relay mode, and a ``statsite_proxy`` forwarder with
the servers in file order and their weights (so the ketama ring is the same). The servers file
is read by ``convert_statsrelay.py``'s parser, quirks included (a last line without a newline
loses its weight's last digit, as libketama reads it). The YAML goes to stdout; what has no
equivalent is listed on stderr; the result is validated against pystatsd's schema first.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pystatsd.config import ConfigError, build_config  # noqa: E402

DEFAULTS = {"port": "8150", "udp_port": "8150", "servers": "config/servers.conf",
            "log_level": "DEBUG", "daemonize": "0"}
LOG_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARNING", "ERROR": "ERROR",
              "CRITICAL": "ERROR"}


class ConversionError(ValueError):
    """The input cannot be converted; the message says why."""


def _servers_parser() -> Any:
    spec = importlib.util.spec_from_file_location(
        "convert_statsrelay", Path(__file__).resolve().parent / "convert_statsrelay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert(ini_text: str, ini_path: Path, servers_path: Path | None,
            warnings: list[str]) -> dict[str, Any]:
    """Given the INI's text (and where it is), return the pystatsd config."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.read_string(ini_text, str(ini_path))
    section = next((s for s in parser.sections() if s.lower() == "statsite-proxy"), None)
    if section is None:
        raise ConversionError(f"{ini_path}: no [statsite-proxy] section (statsite-proxy "
                              "ignores every other section)")
    values = dict(DEFAULTS)
    for key, value in parser[section].items():
        key = key.lower()
        if key == "tcp_port":
            key = "port"
        if key not in DEFAULTS and key != "pid_file":
            warnings.append(f"{key}: unknown to statsite-proxy too; ignored")
            continue
        values[key] = value.strip()
    try:
        tcp_port, udp_port = int(values["port"]), int(values["udp_port"])
    except ValueError as exc:
        raise ConversionError(f"port/udp_port: not a number ({exc})") from None
    if servers_path is None:
        servers_path = Path(values["servers"])
        if not servers_path.is_absolute():
            servers_path = ini_path.parent / servers_path
            warnings.append(f"servers: {values['servers']!r} read from {servers_path} "
                            "(statsite-proxy opens it relative to its working directory)")
    module = _servers_parser()
    try:
        relay = module.from_statsite_proxy(servers_path.read_text("utf-8"), tcp_port, warnings)
    except module.ConversionError as exc:
        raise ConversionError(f"{servers_path}: {exc}") from None
    backends = relay["forwarders"]["relay"]["groups"][0]["backends"]
    servers = [{"address": f"{b['host']}:{b['port']}", "weight": b["weight"]} for b in backends]
    level = LOG_LEVELS.get(values["log_level"].upper())
    if level is None:
        warnings.append(f"log_level: {values['log_level']!r} unknown; INFO kept")
        level = "INFO"
    if values["daemonize"].lower() in ("1", "true", "yes"):
        warnings.append("daemonize: pystatsd runs in the foreground under systemd or its init "
                        "script; not carried over")
    if "pid_file" in values:
        warnings.append("pid_file: written by the init script, not the daemon; not carried over")
    return {
        "mode": "relay",
        "bind_address": "0.0.0.0",
        "bind_port": tcp_port,
        "listeners": [{"protocol": "tcp", "port": tcp_port, "format": "statsite"},
                      {"protocol": "udp", "port": udp_port, "format": "statsite"}],
        "logging": {"level": level},
        "forwarders": {"statsite_proxy": {"type": "statsite_proxy", "servers": servers}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_statsite_proxy.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("ini", help="statsite-proxy's INI config file")
    parser.add_argument("--servers", help="the servers file (default: the INI's `servers`)")
    parser.add_argument("-o", "--output", help="write the YAML here instead of stdout")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    warnings: list[str] = []
    try:
        ini_path = Path(options.ini)
        config = convert(ini_path.read_text("utf-8"), ini_path,
                         Path(options.servers) if options.servers else None, warnings)
        build_config(config, "converted config")
    except ConfigError as exc:
        print(f"convert_statsite_proxy: the result does not validate: {exc}", file=sys.stderr)
        return 1
    except (ConversionError, OSError, ValueError, configparser.Error) as exc:
        print(f"convert_statsite_proxy: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = yaml.safe_dump(config, sort_keys=False)
    if options.output:
        Path(options.output).write_text(text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
