"""A third-party forwarder: each series of each flush as one JSON line in ``path``.

It imports only the public ``forwarders`` API, as a plug-in must."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from forwarders import AggregateForwarder, Snapshot, series_record


class SampleForwarder(AggregateForwarder):
    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["path"],
        "properties": {"path": {"type": "string", "description": "Where the lines go."}},
    }
    TOTALS: ClassVar[tuple[str, ...]] = (*AggregateForwarder.TOTALS, "lines_written")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters["lines_written"] = 0

    def send(self, snapshot: Snapshot) -> None:
        with open(self.config["path"], "a") as out:
            for series in snapshot.series:
                out.write(json.dumps(series_record(series, snapshot)) + "\n")
                self.counters["lines_written"] += 1
