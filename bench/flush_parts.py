"""The daemon's own share of one forked flush, part by part, in callgrind instructions per
series (the load does not move them; bench/end_to_end.py --instructions counts the whole).

The snapshot child's byte stream for a table of ``--series`` series is made once, in process
(``forked_snapshot._child_work`` writing into a file, the Kafka (json) and file forwarders'
``prepare`` hooks included); then each part the parent does with it runs alone inside
``itertools.starmap`` under ``valgrind --tool=callgrind --toggle-collect=starmap_next``
(``starmap``, not ``map``: the parts use ``map`` themselves):

    read       the frames off the stream (headers, payload bytes), nothing decoded
    unmarshal  ``marshal.loads`` of the series frames
    construct  ``SeriesStats`` from the loaded rows: the frozen dataclass's ``__init__``
               (main's way) and ``forked_snapshot.make_series`` (this branch's)
    carried    the carried gauges' and traces' frames loaded into their dicts
    prepared   the prepared frames loaded (Kafka's ready messages, the file's lines)
    kafka      ``KafkaForwarder.send_prepared`` of the flush (a closed port: produce() queues)
    file       ``FileForwarder.send_prepared`` of the flush (writes the file)

``--mix counters`` is bench/end_to_end.py's table (``bench.app<i>.requests.count``);
``--mix mixed`` a quarter each of counters, gauges (carried), timers (10 samples) and sets.

    PYTHONPATH=. python bench/flush_parts.py [--series 20000] [--mix counters|mixed]
"""

from __future__ import annotations

import argparse
import functools
import io
import marshal
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import deque
from itertools import starmap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PARTS = ("read", "unmarshal", "construct-init", "construct-made", "carried", "prepared",
         "kafka", "file")


def child_stream(series: int, mix: str, tmp: str) -> tuple[bytes, dict[str, Any]]:
    """The child's bytes for one flush, and the forwarders (opened) to send it."""
    from forwarders.base import ForwarderContext
    from forwarders.file import FileForwarder
    from forwarders.kafka import KafkaForwarder
    from forwarders.kafka.embedded_broker import free_port
    from pystatsd import daemon, forked_snapshot
    from pystatsd.aggregation import MetricMgr
    from pystatsd.config import build_config
    from pystatsd.sample import COUNTER, GAUGE, SET, TIMER, Sample
    from pystatsd.snapshot import Snapshot

    config = build_config({"forwarders": {
        "kafka": {"type": "kafka", "kafka_broker": f"127.0.0.1:{free_port()}",
                  "kafka_topic": "count", "format": "json"},
        "file": {"type": "file", "path": f"{tmp}/out.jsonl"}}})
    senders: dict[str, Any] = {
        "kafka": KafkaForwarder("kafka", config["forwarders"]["kafka"],
                                ForwarderContext(state_dir=Path(tmp))),
        "file": FileForwarder("file", config["forwarders"]["file"],
                              ForwarderContext(state_dir=Path(tmp)))}
    for sender in senders.values():
        sender.open()
    manager = MetricMgr(config)
    for i in range(series):
        kind = i % 4 if mix == "mixed" else 0
        if kind == 0:
            manager.add(Sample(f"bench.app{i}.requests.count", COUNTER, 7.0))
        elif kind == 1:
            manager.add(Sample(f"bench.app{i}.queue", GAUGE, float(i)))
        elif kind == 2:
            for value in range(10):
                manager.add(Sample(f"bench.app{i}.latency", TIMER, float(value)))
        else:
            for member in range(5):
                manager.add(Sample(f"bench.app{i}.users", SET, f"u{member}"))
    header = Snapshot(start=1000.0, interval=10.0, host="bench")
    preparation = forked_snapshot.Preparation({name: functools.partial(
        daemon._prepare, type(sender), sender.config, header)
        for name, sender in senders.items()})
    path = Path(tmp) / "stream"
    with path.open("wb") as out:
        forked_snapshot._child_work(manager, manager.swap(), 10.0, os.dup(out.fileno()),
                                    preparation)
    return path.read_bytes(), senders


def frames(stream: bytes) -> list[tuple[int, bytes]]:
    from pystatsd import forked_snapshot

    pipe = io.BytesIO(stream)
    got = []
    while True:
        try:
            got.append(forked_snapshot._read_frame(pipe, 0.0))
        except forked_snapshot.ForkedSnapshotError:
            return got


def counted(part: str, series: int, mix: str) -> None:
    """The workload under callgrind: one part, alone inside ``starmap``."""
    from pystatsd import forked_snapshot
    from pystatsd.snapshot import DeferredSnapshot, SeriesStats

    kinds = forked_snapshot
    with tempfile.TemporaryDirectory() as tmp:
        stream, senders = child_stream(series, mix, tmp)
        parsed = frames(stream)
        series_frames = [data for kind, data in parsed if kind == kinds._SERIES]
        rows = [row for data in series_frames for row in marshal.loads(data)]
        prepared: dict[str, list[Any]] = {}
        for kind, data in parsed:
            if kind == kinds._PREPARED:
                name, items = marshal.loads(data)
                prepared.setdefault(name, []).extend(items)
        flush = DeferredSnapshot.of(1000.0, 10.0, "bench", len(rows),
                                    lambda: forked_snapshot.make_series(rows), ())

        def construct_init() -> None:
            [SeriesStats(name, type_, tags, stats, stamp, partial=partial)
             for name, type_, tags, stats, stamp, partial, _ in rows]

        def carried() -> None:
            maps: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
            for kind, data in parsed:
                if kind in (kinds._GAUGES, kinds._TRACES):
                    target = maps[kind - kinds._GAUGES]
                    for key, value, idle in marshal.loads(data):
                        target[key] = [value, idle]

        work = {
            "read": lambda: frames(stream),
            "unmarshal": lambda: [marshal.loads(data) for data in series_frames],
            "construct-init": construct_init,
            "construct-made": lambda: forked_snapshot.make_series(rows),
            "carried": carried,
            "prepared": lambda: [marshal.loads(data) for kind, data in parsed
                                 if kind == kinds._PREPARED],
            "kafka": lambda: senders["kafka"].send_prepared(flush, prepared["kafka"]),
            "file": lambda: senders["file"].send_prepared(flush, prepared["file"]),
        }[part]
        deque(starmap(work, [()]), maxlen=0)
        sys.stdout.flush()
        os._exit(0)  # no shutdown: its cost is not the flush's


def instructions(part: str, series: int, mix: str) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["setarch", platform.machine(), "-R", "valgrind", "--tool=callgrind",
             "--toggle-collect=starmap_next", f"--callgrind-out-file={workdir}/out.%p",
             sys.executable, __file__, "--count", part, "--series", str(series),
             "--mix", mix],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(REPO)})
    parent = re.search(r"==(\d+)==", result.stderr)
    assert parent is not None, result.stderr[-2000:]
    mine = re.search(rf"=={parent.group(1)}== Collected : (\d+)", result.stderr)
    assert mine is not None, result.stderr[-2000:]
    return int(mine.group(1)) / series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=20_000)
    parser.add_argument("--mix", choices=("counters", "mixed"), default="counters")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--count", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:
        counted(args.count, args.series, args.mix)
    print(f"{args.series:,} series, {args.mix}; load {os.getloadavg()[0]:.1f}", flush=True)
    for part in args.parts.split(","):
        print(f"{part:15} {instructions(part, args.series, args.mix):>9,.0f} "
              "instructions/series", flush=True)


if __name__ == "__main__":
    main()
