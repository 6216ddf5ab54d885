#!/usr/bin/env python3
"""Print the messages arriving in a Kafka topic, for operators checking what pystatsd sends.

    .venv/bin/python tools/kafka_tail.py --bootstrap 127.0.0.1:9092 --topic metrics \\
        --from-beginning

One line per message: partition, offset, key, value. Reads with assign() over every partition
(no consumer group, nothing committed, no rebalance wait). Says on stderr while no broker
answers or the topic does not exist yet. Stops after --max messages, or after --timeout
seconds without a message; by default it follows until Ctrl-C. Exits 1 when no broker answered
within --timeout, or when the broker goes away (every broker unreachable for 2 s). SIGTERM
prints what has already arrived, then exits 0 (tools/run.sh stops it so after the daemon's
final flush).

--self-metrics summary folds the daemon's own series (keys starting with --self-prefix) into
one short line per flush; hide leaves them out.
"""

from __future__ import annotations

import argparse
import fnmatch
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from forwarders.kafka.reading import BrokerUnreachable, TopicMessage, follow_topic  # noqa: E402

BROKER_GONE_AFTER = 2.0  # seconds with every broker unreachable before giving up
FLUSH_BURST_GAP = 0.5  # seconds without a message that end one flush's burst of messages
FINISH_GAP = 0.3  # after SIGTERM, exit once this long passes without a message

# The self-metrics a summary line shows, in this order (names after the prefix; * matches
# within a name). rejected.* are summed into one figure.
HEADLINE = ("received.*", "rejected", "series", "forwarder.*.delivered", "forwarder.*.dropped*",
            "forwarder.*.spooled")


def show(message: TopicMessage) -> None:
    key = message.key.decode("utf-8", "replace") if message.key is not None else "-"
    value = message.value.decode("utf-8", "replace")
    print(f"p{message.partition} @{message.offset} key={key} {value}", flush=True)


class SelfMetricsSummary:
    """Collects the self-metric messages of one flush and prints them as one line."""

    def __init__(self, prefix: str, out: Callable[[str], None]) -> None:
        self.prefix = prefix
        self.out = out
        self.series = 0
        self.interval_start: float | None = None
        self.values: dict[str, float] = {}
        self.explained = False

    def add(self, message: TopicMessage) -> None:
        self.series += 1
        try:
            record = orjson.loads(message.value)
            name = str(record["name"])[len(self.prefix):]
            stats = record["stats"]
            value = float(stats["count"] if "count" in stats else stats["value"])
            self.interval_start = float(record["interval_start"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not the json format: the line counts the series only
        if name.startswith("rejected."):
            name = "rejected"
        self.values[name] = self.values.get(name, 0.0) + value

    def flush(self) -> None:
        if not self.series:
            return
        when = (time.strftime("%H:%M:%S", time.localtime(self.interval_start))
                if self.interval_start is not None else "?")
        if self.values:
            self.values.setdefault("rejected", 0.0)  # reported only when non-zero
        figures = [f"{name}={value:g}" for pattern in HEADLINE
                   for name, value in sorted(self.values.items())
                   if fnmatch.fnmatchcase(name, pattern)]
        line = f"-- {self.prefix}* self-metrics, interval from {when}: {self.series} series"
        self.out(line + (": " + " ".join(figures) if figures else ""))
        if not self.explained:
            self.out(f"   (each flush's {self.prefix}* series folded into one line like this;"
                     " --self-metrics show prints them, and self_metrics.enabled: false in the"
                     " daemon's config turns them off)")
            self.explained = True
        self.series, self.interval_start, self.values = 0, None, {}


class Finish:
    """SIGTERM: once following the topic, print what has arrived, then stop; before that
    (no broker or no topic yet), stop at once."""

    following = False
    requested = False

    @classmethod
    def request(cls, _signum: int, _frame: FrameType | None) -> None:
        if not cls.following:
            raise SystemExit(0)
        cls.requested = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="host:port[,...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the oldest message, not at the end")
    parser.add_argument("--max", type=int, default=None, help="stop after N messages")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop after S seconds without a message, and wait at most S "
                        "seconds for a broker (exit 1) and for the topic to exist")
    parser.add_argument("--self-metrics", choices=("show", "summary", "hide"), default="show",
                        help="the daemon's own series: each on its line (default), one "
                        "summary line per flush, or not at all")
    parser.add_argument("--self-prefix", default="pystatsd.",
                        help="key prefix of the daemon's own series (self_metrics.prefix)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, Finish.request)

    def say(text: str) -> None:
        print(f"kafka_tail: {text}", file=sys.stderr, flush=True)

    def out(text: str) -> None:
        print(text, flush=True)

    wait_hint = "" if args.timeout is not None else " (--timeout S gives up after S s)"
    summary = SelfMetricsSummary(args.self_prefix, out)
    prefix = args.self_prefix.encode()
    shown = 0
    last = time.monotonic()
    finish_from: float | None = None
    try:
        for message in follow_topic(args.bootstrap, args.topic, args.from_beginning,
                                    first_timeout=args.timeout or float("inf"),
                                    gone_after=BROKER_GONE_AFTER,
                                    on_wait=lambda text: say(text + wait_hint)):
            now = time.monotonic()
            Finish.following = True
            if Finish.requested and finish_from is None:
                finish_from = now
            if message is None:
                if now - last >= FLUSH_BURST_GAP:
                    summary.flush()
                if args.timeout is not None and now - last >= args.timeout:
                    break
                if finish_from is not None and now - max(last, finish_from) >= FINISH_GAP:
                    break
                continue
            last = now
            if args.self_metrics != "show" and (message.key or b"").startswith(prefix):
                if args.self_metrics == "summary":
                    summary.add(message)
            else:
                show(message)
            shown += 1
            if args.max is not None and shown >= args.max:
                break
        else:  # only ends by itself when the topic never appeared
            say(f"topic {args.topic!r} did not appear within {args.timeout:g} s")
            return 1
    except KeyboardInterrupt:
        pass
    except BrokerUnreachable as exc:
        summary.flush()
        say(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - an operator tool reports, it does not trace back
        say(str(exc))
        return 1
    summary.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
