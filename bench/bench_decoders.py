"""How fast the decoders turn payloads into samples, without any cache in front of them.

The ingest path caches parse_statsd_line by line, so this is the cost of a cache miss (a new
series) and of JSON, which is not cached. Run: PYTHONPATH=. python bench/bench_decoders.py"""

from __future__ import annotations

import time
from collections.abc import Callable

from pystatsd.decoders import decode_payload, parse_statsd_line
from pystatsd.selfstats import SelfStats

STATSD_LINES = [
    b"api.requests:1|c",
    b"api.latency:12.5|ms|@0.5|#env:prod,route:/v1/users",
    b"queue.depth,host=a,region=eu:+3|g",
    b"users.uniques:u12345|s|#env:prod",
    b"payload.size:1024:2048:512|d|#service:web",
]
STATSD_DATAGRAM = b"\n".join(STATSD_LINES * 4)  # 20 lines, a typical batched client datagram
JSON_OBJECT = (b'{"metric_name":"cfbroker.latency","metric_type":"guage","value":43,'
               b'"stage":"success","host":"web-1"}')
JSON_ARRAY = b"[" + b",".join([JSON_OBJECT] * 20) + b"]"


def rate(work: Callable[[], object], units: int, seconds: float = 1.0) -> float:
    """Run ``work`` for about ``seconds``; return units per second."""
    runs = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            work()
        runs += 100
    return runs * units / elapsed


def main() -> None:
    stats = SelfStats()
    line = STATSD_LINES[1]
    cases: list[tuple[str, Callable[[], object], int, str]] = [
        ("parse_statsd_line (tags, rate)", lambda: parse_statsd_line(line), 1, "lines"),
        ("decode_payload statsd, 20 lines", lambda: decode_payload(STATSD_DATAGRAM, stats), 20,
         "lines"),
        ("decode_payload one JSON object", lambda: decode_payload(JSON_OBJECT, stats), 1,
         "objects"),
        ("decode_payload JSON array of 20", lambda: decode_payload(JSON_ARRAY, stats), 20,
         "objects"),
    ]
    for label, work, units, unit in cases:
        print(f"{label:<33} {rate(work, units):>10,.0f} {unit}/s")


if __name__ == "__main__":
    main()
