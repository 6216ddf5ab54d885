"""Prints each flush to standard output, one JSON record per series per line."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import orjson

from forwarders.aggregate import AggregateForwarder
from forwarders.records import snapshot_records
from pystatsd.snapshot import Snapshot


class ConsoleForwarder(AggregateForwarder):
    """One JSON line per series (see ``snapshot_records``), flushed after every snapshot so a
    pipe or the journal sees each interval as soon as it is complete."""

    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "stream": {
                "enum": ["stdout", "stderr"],
                "default": "stdout",
                "description": "Where the records go.",
            },
        },
    }

    def send(self, snapshot: Snapshot) -> None:
        stream = sys.stdout if self.config["stream"] == "stdout" else sys.stderr
        out = stream.buffer
        for record in snapshot_records(snapshot):
            out.write(orjson.dumps(record) + b"\n")
        out.flush()
