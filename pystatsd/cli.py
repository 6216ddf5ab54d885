"""The ``pystatsd`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import orjson

from pystatsd import __version__
from pystatsd.config import Config, ConfigError, build_config, load_config, validate_in_child

DEFAULT_CONFIG_PATH = "/etc/pystatsd/pystatsd.conf"

_EPILOG = """\
signals:
  TERM, INT  stop: close listeners, flush, drain forwarders within shutdown_timeout, exit 0
             (a second TERM/INT stops at once, exit 1)
  HUP        reload the config file; an invalid file is refused and the old config keeps running
  USR1       reopen the log file (logrotate)
  USR2       hot restart: start the code on disk, hand it the sockets and the interval in
             flight, exit; a successor that fails is stopped and this daemon keeps serving

exit status: 0 clean stop or valid config, 1 bad config or start-up failure, 2 bad usage,
             3 (--status) no daemon answers.
config reference: README.md "Configuration" (generated from the schema), --print-default-config
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pystatsd",
        description="Receive statsd/DogStatsD lines and JSON metrics over UDP and TCP, merge "
        "agent tags, aggregate per flush interval and forward each flush (Kafka, statsd relay, "
        "console, file). Runs in the foreground; logs to stderr by default.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"config file (default: {DEFAULT_CONFIG_PATH} if it exists, else "
                        "built-in defaults: listen on 127.0.0.1:5090, print flushes to stdout)")
    parser.add_argument("--check-config", metavar="FILE",
                        help="validate FILE, print every error with its key, exit 0 or 1")
    parser.add_argument("--as-user", metavar="USER",
                        help="with --check-config, run as root: check that USER (the service's "
                        "user, pystatsd in the packages) can write every path start-up needs")
    parser.add_argument("--status", action="store_true",
                        help="ask the running daemon (found through the config's state_dir) "
                        "what it is doing; print JSON; exit 3 if none answers")
    parser.add_argument("--routes-reset", action="store_true",
                        help="drop the runtime route changes (route add/del/patt/mod): the "
                        "running daemon goes back to the config file's routes, or, when none "
                        "runs, the saved overlay in state_dir is removed")
    parser.add_argument("--print-default-config", action="store_true",
                        help="print the documented default config (YAML) and exit")
    parser.add_argument("--list-forwarders", action="store_true",
                        help="print every forwarder type this installation knows and where it "
                        "comes from (built-in, or the distribution that registered it); exit 1 "
                        "if two sources claim one name")
    parser.add_argument("--version", action="version", version=_version_text())
    return parser


def _version_text() -> str:
    from forwarders import known_forwarder_names
    from pystatsd.aggregation import LINE_CACHE
    from pystatsd.listeners import UDP_RECEIVE

    return (f"pystatsd {__version__} (forwarders: {', '.join(known_forwarder_names())}; "
            f"udp receive: {UDP_RECEIVE}; line cache: {LINE_CACHE})")


def _report(error: ConfigError) -> None:
    for line in error.errors:
        print(f"{error.source}: {line}", file=sys.stderr)


def _status(config: Config) -> int:
    from pathlib import Path

    from pystatsd.admin import SOCKET_NAME, NotRunning, ask

    try:
        answer = ask(Path(config["state_dir"]) / SOCKET_NAME)
    except NotRunning as exc:
        print(f"pystatsd is not running: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"cannot ask pystatsd: {exc}", file=sys.stderr)
        return 4
    sys.stdout.buffer.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _check_config(path: str, as_user: str | None) -> int:
    """The schema first; then every path the daemon will write (log, state_dir, spools,
    files), checked as ``as_user`` when given."""
    from pystatsd.preflight import check_paths, check_paths_as, needed_paths

    try:
        config = load_config(path)
    except ConfigError as error:
        _report(error)
        return 1
    needed = needed_paths(config)
    problems = check_paths_as(as_user, needed) if as_user else check_paths(needed)
    for line in problems:
        print(f"{path}: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{path}: ok")
    if os.geteuid() == 0 and not as_user:
        print("note: paths were checked as root; add --as-user pystatsd to check them as the "
              "packaged service's user", file=sys.stderr)
    return 0


def _list_forwarders() -> int:
    from forwarders import discover

    registry = discover()
    width = max(map(len, registry.names()))
    for name in registry.names():
        if name in registry.clashes:
            print(f"{name:<{width}}  REFUSED: {registry.clash_line(name)}")
        else:
            print(f"{name:<{width}}  {registry.available[name]}")
    return 1 if registry.clashes else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.print_default_config:
        from pystatsd.config_docs import render_sample_config

        sys.stdout.write(render_sample_config())
        return 0
    if args.list_forwarders:
        return _list_forwarders()
    if args.check_config:
        return _check_config(args.check_config, args.as_user)
    path = args.config
    validate_in_child()  # a daemon (or --status) keeps jsonschema out of its memory
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    try:
        config: Config = load_config(path) if path else build_config({}, "<built-in defaults>")
    except ConfigError as error:
        _report(error)
        return 1
    if args.status:
        return _status(config)
    if args.routes_reset:
        from pystatsd.route_overlay import reset_command

        return reset_command(config)
    from pystatsd.daemon import run_daemon

    return run_daemon(config, path)


if __name__ == "__main__":
    raise SystemExit(main())
