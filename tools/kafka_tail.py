#!/usr/bin/env python3
"""Print the messages arriving in a Kafka topic, for operators checking what pystatsd sends.

    tools/kafka_tail.py --bootstrap 127.0.0.1:9092 --topic metrics --from-beginning

One line per message: partition, offset, key, value. Reads with assign() over every partition
(no consumer group, nothing committed, no rebalance wait). Stops after --max messages, or
after --timeout seconds without a message; by default it follows until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from forwarders.kafka.reading import tail_topic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="host:port[,...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the oldest message, not at the end")
    parser.add_argument("--max", type=int, default=None, help="stop after N messages")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop after S seconds without a message (and wait at most S "
                        "seconds for the topic to exist)")
    args = parser.parse_args(argv)
    shown = 0
    try:
        for message in tail_topic(args.bootstrap, args.topic, args.from_beginning,
                                  idle_timeout=args.timeout,
                                  first_timeout=args.timeout or 3600.0):
            key = message.key.decode("utf-8", "replace") if message.key is not None else "-"
            value = message.value.decode("utf-8", "replace")
            print(f"p{message.partition} @{message.offset} key={key} {value}", flush=True)
            shown += 1
            if args.max is not None and shown >= args.max:
                break
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - an operator tool reports, it does not trace back
        print(f"kafka_tail: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
