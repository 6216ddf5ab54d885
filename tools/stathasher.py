#!/usr/bin/env python3
"""Print which backend each metric name goes to (lyft/statsrelay's ``stathasher``).

  stathasher.py -c pystatsd.conf [--forwarder NAME] [NAME ...]

Names come from the arguments, or one per line on stdin. A name may carry DogStatsD tags as
``name|#k:v,k2:v2`` (they count with ``hash_key: name_and_tags``). For each name and each
destination group, one line:

  key=<name> group=<group> backend=<host:port:proto> shard=<slot>
  key=<name> group=<group> skipped=<filtered_lines|rejected_lines>

Owners are computed with every backend alive (``dead_backend_policy: reroute`` moves keys
only while a backend is dead).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forwarders.base import ForwarderContext  # noqa: E402
from forwarders.statsd_relay import StatsdRelayForwarder  # noqa: E402
from pystatsd.config import ConfigError, load_config  # noqa: E402


def relay_from_config(path: str, name: str | None) -> StatsdRelayForwarder:
    """The (unstarted) relay forwarder named ``name`` in the config, or its only one."""
    config = load_config(path)
    relays = {n: s for n, s in config["forwarders"].items()
              if s.get("type", n) == "statsd_relay"}
    if name is not None:
        if name not in relays:
            raise ConfigError(path, [f"forwarders.{name}: no statsd_relay forwarder of that "
                                     f"name (have: {', '.join(relays) or 'none'})"])
        return StatsdRelayForwarder(name, relays[name], ForwarderContext())
    if len(relays) != 1:
        raise ConfigError(path, [f"forwarders: {len(relays)} statsd_relay forwarders; "
                                 "choose one with --forwarder"])
    (only, section), = relays.items()
    return StatsdRelayForwarder(only, section, ForwarderContext())


def describe(relay: StatsdRelayForwarder, keys: Iterable[str]) -> Iterable[str]:
    for key in keys:
        key = key.strip()
        if not key:
            continue
        name, _, tags = key.partition("|#")
        for group, backend, slot, reason in relay.owners(name.encode(), tags.encode()):
            if backend is None:
                yield f"key={key} group={group} skipped={reason}"
            else:
                yield f"key={key} group={group} backend={backend} shard={slot}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stathasher.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    parser.add_argument("-c", "--config", required=True, help="pystatsd config (YAML)")
    parser.add_argument("--forwarder", help="which statsd_relay forwarder, if several")
    parser.add_argument("names", nargs="*", help="metric names (default: read stdin)")
    options = parser.parse_args(argv)
    try:
        relay = relay_from_config(options.config, options.forwarder)
    except (ConfigError, ValueError) as exc:
        print(f"stathasher: {exc}", file=sys.stderr)
        return 2
    for line in describe(relay, options.names or sys.stdin):
        print(line, flush=not options.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
