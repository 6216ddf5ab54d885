#!/usr/bin/env python3
"""Convert a statsd relay's configuration into a pystatsd config that routes every metric to
the same backend.

  convert_statsrelay.py jjneely [FLAGS] HOST:PORT[:INSTANCE] ...   (jjneely/statsrelay argv)
  convert_statsrelay.py lyft statsrelay.json                       (lyft/statsrelay 2.x JSON)
  convert_statsrelay.py statsite-proxy servers.conf [--port 8150]  (statsite-proxy servers file)

The YAML goes to stdout (or ``-o FILE``); every setting that is not converted (no equivalent,
or a key the converter does not know, such as a misspelt one) is one warning line on stderr;
with ``--strict`` any of them refuses the conversion (exit 1, nothing written). The result is
validated against pystatsd's schema before it is written. docs/relay.md explains each mapping.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pystatsd.config import ConfigError, build_config  # noqa: E402

Config = dict[str, Any]

# jjneely flags that take a value, and what they become (None: no equivalent, reported)
JJNEELY_VALUE_FLAGS = {
    "b": "bind", "bind": "bind", "p": "port", "port": "port",
    "metrics-prefix": "metrics-prefix", "metrics-tags": "metrics-tags",
    "packetlen": "packetlen", "sendproto": "sendproto", "prefix": "prefix",
    "bufsize": "bufsize", "t": "tcptimeout", "tcptimeout": "tcptimeout",
    "tcpmaxactive": None, "tcpmaxidle": None, "tcpmaxtimeout": None, "tcpmaxnew": None,
    "dnscache-time": None, "dnscache-purge": None, "dnscache-expiration": None,
    "pprof-bind": None, "maxprocs": None, "backoff-retries": None, "backoff-min": None,
    "backoff-max": None, "backoff-factor": None,
}
JJNEELY_BOOL_FLAGS = {"v", "verbose", "dnscache", "pprof"}


class ConversionError(ValueError):
    """The input cannot be converted; the message says why."""


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text or "0.0.0.0", default_port
    return host.strip("[]") or "0.0.0.0", int(port)


def from_jjneely(argv: list[str], warnings: list[str]) -> Config:
    """Given jjneely/statsrelay's command line arguments, return the pystatsd config."""
    values: dict[str, str] = {"bind": "0.0.0.0", "port": "9125", "packetlen": "1400",
                              "sendproto": "UDP"}
    targets: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("-") and len(arg) > 1:
            name, has_value, value = arg.lstrip("-").partition("=")
            if name in JJNEELY_BOOL_FLAGS:
                if name in ("dnscache", "pprof"):
                    warnings.append(f"-{name}: no equivalent, ignored")
                else:
                    warnings.append(f"-{name}: not converted; pystatsd's own is logging.level")
                continue
            if name not in JJNEELY_VALUE_FLAGS:
                raise ConversionError(f"unknown statsrelay flag {arg!r}")
            if not has_value:
                if not args:
                    raise ConversionError(f"flag {arg!r} needs a value")
                value = args.pop(0)
            key = JJNEELY_VALUE_FLAGS[name]
            if key is None:
                warnings.append(f"-{name}: no equivalent, ignored")
            else:
                values[key] = value
        else:
            targets.append(arg)
    if not targets:
        raise ConversionError("statsrelay needs at least one HOST:PORT[:INSTANCE] target")
    protocol = values["sendproto"].lower()
    if protocol not in ("udp", "tcp"):
        raise ConversionError(f"-sendproto {values['sendproto']}: only UDP and TCP relay")
    backends = []
    for target in targets:
        parts = target.split(":")
        if len(parts) not in (2, 3):
            raise ConversionError(f"target {target!r}: expected HOST:PORT[:INSTANCE]")
        backend: Config = {"host": parts[0], "port": int(parts[1]), "protocol": protocol}
        if len(parts) == 3:
            backend["instance"] = parts[2]  # not hashed: only makes a repeated entry distinct
        backends.append(backend)
    group: Config = {"name": "main", "hash": "jump", "backends": backends}
    if values.get("metrics-prefix"):
        group["prefix"] = values["metrics-prefix"] + "."
        group["hash_rewritten_name"] = True  # jjneely hashes the prefixed name
    if values.get("metrics-tags"):
        group["append_tags"] = values["metrics-tags"]
    if "prefix" in values:
        warnings.append("-prefix (the statsProcessed self-metric): pystatsd reports its own "
                        "self-metrics under self_metrics.prefix")
    if "bufsize" in values:
        warnings.append("-bufsize: set listeners[].receive_buffer_bytes instead")
    packetlen = int(values["packetlen"])
    section: Config = {"type": "statsd_relay", "max_datagram_bytes": packetlen,
                       "groups": [group]}
    if "tcptimeout" in values:
        section["connect_timeout"] = _go_duration(values["tcptimeout"])
    host, _ = _split_host_port(values["bind"], 0)
    return {"mode": "relay", "bind_address": host, "bind_port": int(values["port"]),
            "listeners": [{"protocol": "udp"}], "forwarders": {"relay": section}}


def _go_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


LYFT_IGNORED = ("sampling_threshold", "sampling_window", "timer_sampling_threshold",
                "timer_sampling_window", "timer_flush_min_max", "reservoir_size",
                "gauge_sampling_threshold", "gauge_sampling_window", "counter_cardinality",
                "timer_cardinality", "gauge_cardinality", "hm_key_expiration_frequency",
                "hm_key_ttl")


def _lyft_backend(entry: str) -> str:
    parts = entry.split(":")
    if len(parts) == 2:
        return f"{entry}:tcp"  # lyft: no protocol means TCP
    if len(parts) == 3:
        return f"{parts[0]}:{parts[1]}:{'udp' if parts[2] == 'udp' else 'tcp'}"
    raise ConversionError(f"shard_map entry {entry!r}: expected host:port[:proto]")


# lyft keys the converter maps, per section: a group's own keys, and the statsd section's
LYFT_GROUP_KEYS = ("shard_map", "prefix", "suffix", "input_filter", "input_blacklist")
LYFT_STATSD_KEYS = ("bind", "duplicate_to", "max_send_queue", "udp_receive_buffer_size")
LYFT_STATSD_NO_EQUIVALENT = ("validate", "validate_tags", "point_tag_regex", "auto_reconnect",
                             "reconnect_threshold", "tcp_cork")


def _warn_unknown(section: Config, where: str, known: tuple[str, ...],
                  warnings: list[str]) -> None:
    """One warning per key nothing below converts: a misspelt ``input_filter`` would otherwise
    leave a group without its filter, so it would receive (duplicate) every metric."""
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            warnings.append(f"{where}.{key}: unknown key, not converted{hint}")


def _lyft_group(section: Config, name: str, where: str, warnings: list[str]) -> Config:
    if not section.get("shard_map"):
        raise ConversionError(f"{where}: shard_map is missing or empty")
    group: Config = {"name": name, "hash": "shard_map",
                     "backends": [_lyft_backend(str(e)) for e in section["shard_map"]]}
    for ours, theirs in (("prefix", "prefix"), ("suffix", "suffix"),
                         ("filter", "input_filter"), ("blacklist", "input_blacklist")):
        if section.get(theirs):
            group[ours] = section[theirs]
    for key in LYFT_IGNORED:
        if key in section:
            warnings.append(f"{where}.{key}: relay-side sampling and cardinality limits are not "
                            "supported; lines are relayed unsampled")
    return group


def from_lyft(document: Config, warnings: list[str]) -> Config:
    """Given lyft/statsrelay's JSON config, return the pystatsd config."""
    statsd = document.get("statsd")
    if not isinstance(statsd, dict):
        raise ConversionError("no \"statsd\" object: not a lyft/statsrelay config")
    for key in document:
        if key != "statsd":
            warnings.append(f"{key}: not converted (only the \"statsd\" section is)")
    _warn_unknown(statsd, "statsd", (*LYFT_STATSD_KEYS, "health_metrics_to",
                                     *LYFT_STATSD_NO_EQUIVALENT, *LYFT_GROUP_KEYS, *LYFT_IGNORED),
                  warnings)
    groups = []
    if statsd.get("shard_map"):
        groups.append(_lyft_group(statsd, "main", "statsd", warnings))
    duplicates = statsd.get("duplicate_to", [])
    if isinstance(duplicates, dict):
        sections = [(duplicates, "statsd.duplicate_to")]
    else:
        sections = [(d, f"statsd.duplicate_to[{i}]") for i, d in enumerate(duplicates)]
    for index, (duplicate, where) in enumerate(sections):
        if not isinstance(duplicate, dict):
            raise ConversionError(f"{where}: expected an object")
        _warn_unknown(duplicate, where, (*LYFT_GROUP_KEYS, *LYFT_IGNORED), warnings)
        groups.append(_lyft_group(duplicate, f"duplicate{index}", where, warnings))
    if not groups:
        raise ConversionError("neither shard_map nor duplicate_to: nothing to relay to")
    if "health_metrics_to" in statsd:
        warnings.append("statsd.health_metrics_to: use pystatsd's self_metrics and admin stats")
    for key in LYFT_STATSD_NO_EQUIVALENT:
        if key in statsd:
            warnings.append(f"statsd.{key}: no equivalent, ignored")
    host, port = _split_host_port(statsd.get("bind", "127.0.0.1:8125"), 8125)
    section: Config = {"type": "statsd_relay", "groups": groups}
    if "max_send_queue" in statsd:
        section["queue_bytes"] = int(statsd["max_send_queue"])
    listeners: list[Config] = [{"protocol": "udp"}, {"protocol": "tcp"}]
    if "udp_receive_buffer_size" in statsd:
        listeners[0]["receive_buffer_bytes"] = int(statsd["udp_receive_buffer_size"])
    return {"mode": "relay", "bind_address": host, "bind_port": port,
            "listeners": listeners, "forwarders": {"relay": section}}


def from_statsite_proxy(text: str, port: int, warnings: list[str]) -> Config:
    """Given statsite-proxy's servers file (``ip:port weight`` lines), return the config."""
    backends = []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if len(line) < 2 or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ConversionError(f"servers line {number}: expected 'ip:port weight'")
        address, weight_text = fields
        if number == len(lines) and not text.endswith("\n"):
            # libketama drops the weight's last character, assuming a newline is there:
            # do the same so the ring (and every metric's owner) stays identical
            weight_text = weight_text[:-1]
            warnings.append(f"servers line {number}: no final newline, so statsite-proxy used "
                            f"weight {weight_text or 0}; kept for identical routing")
        try:
            weight = int(weight_text)
        except ValueError:
            weight = 0
        if weight <= 0:
            raise ConversionError(f"servers line {number}: weight must be a positive integer "
                                  "(statsite-proxy rejects the whole file)")
        host, _, backend_port = address.rpartition(":")
        backends.append({"host": host, "port": int(backend_port), "protocol": "tcp",
                         "weight": weight})
    if not backends:
        raise ConversionError("no servers in the file")
    return {"mode": "relay", "bind_address": "0.0.0.0", "bind_port": port,
            "listeners": [{"protocol": "udp"}, {"protocol": "tcp"}],
            "forwarders": {"relay": {"type": "statsd_relay", "groups": [
                {"name": "main", "hash": "ketama", "backends": backends}]}}}


def convert(argv: list[str]) -> tuple[Config, list[str]]:
    """Parse the converter's own command line; return the config and the warnings."""
    parser = argparse.ArgumentParser(
        prog="convert_statsrelay.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("-o", "--output", help="write the YAML here instead of stdout")
    parser.add_argument("--strict", action="store_true",
                        help="refuse (exit 1, write nothing) when any setting is not converted")
    sub = parser.add_subparsers(dest="source", required=True)
    jj = sub.add_parser("jjneely", help="jjneely/statsrelay command line")
    jj.add_argument("args", nargs=argparse.REMAINDER)
    ly = sub.add_parser("lyft", help="lyft/statsrelay JSON config file")
    ly.add_argument("path")
    sp = sub.add_parser("statsite-proxy", help="statsite-proxy servers file")
    sp.add_argument("path")
    sp.add_argument("--port", type=int, default=8150, help="its port/udp_port (default 8150)")
    jjneely_args: list[str] = []
    if "jjneely" in argv:  # its Go-style flags (-port 9125) must not reach argparse
        at = argv.index("jjneely") + 1
        argv, jjneely_args = argv[:at], argv[at:]
    options = parser.parse_args(argv)
    warnings: list[str] = []
    if options.source == "jjneely":
        args = jjneely_args[1:] if jjneely_args[:1] == ["--"] else jjneely_args
        if args and Path(args[0]).name == "statsrelay":
            args = args[1:]
        config = from_jjneely(args, warnings)
    elif options.source == "lyft":
        config = from_lyft(json.loads(Path(options.path).read_text("utf-8")), warnings)
    else:
        config = from_statsite_proxy(Path(options.path).read_text("utf-8"), options.port,
                                     warnings)
    config["_output"] = options.output
    config["_strict"] = options.strict
    return config, warnings


def main(argv: list[str] | None = None) -> int:
    try:
        config, warnings = convert(sys.argv[1:] if argv is None else argv)
    except (ConversionError, OSError, ValueError) as exc:
        print(f"convert_statsrelay: {exc}", file=sys.stderr)
        return 2
    output = config.pop("_output")
    strict = config.pop("_strict")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if strict and warnings:
        print(f"convert_statsrelay: --strict: {len(warnings)} setting(s) not converted, nothing "
              "written", file=sys.stderr)
        return 1
    try:
        build_config(config, "converted config")
    except ConfigError as exc:
        print(f"convert_statsrelay: the result does not validate: {exc}", file=sys.stderr)
        return 1
    text = yaml.safe_dump(config, sort_keys=False)
    if output:
        Path(output).write_text(text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
