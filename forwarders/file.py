"""Appends each flush to a file as JSON lines, rotating it by size.

The lines of the series are made in the daemon's forked snapshot child (:meth:`FileForwarder.
prepare`); the daemon's process only writes them, after those of the series the child did not
see (the self-metrics) and of the events, which it encodes itself.

Rotation is a dozen lines written here rather than borrowed from logging's
RotatingFileHandler, which wants LogRecords and a logger around what is plain data."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import orjson

from forwarders.aggregate import AggregateForwarder
from forwarders.base import ForwarderContext, NeededPath
from forwarders.records import event_record, series_record
from pystatsd.snapshot import Snapshot

WRITE_LINES = 10_000
"""Lines joined into one write (~1.5 MB, ~1.5 ms of GIL) by :meth:`FileForwarder.send_prepared`."""


class FileForwarder(AggregateForwarder):
    """JSON lines, one per series; ``path`` is renamed to ``path.1`` (``path.1`` to ``path.2``...)
    once it would grow past ``max_bytes``, keeping ``backup_count`` old files."""

    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "description": "File the records are appended to."},
            "max_bytes": {
                "type": "integer",
                "minimum": 0,
                "default": 104857600,
                "description": "Rotate before the file would pass this size; 0 never rotates.",
            },
            "backup_count": {
                "type": "integer",
                "minimum": 0,
                "default": 5,
                "description": "Rotated files kept (path.1 is the newest).",
            },
        },
    }

    _file: BinaryIO | None = None

    @classmethod
    def needed_paths(cls, name: str, section: Mapping[str, Any],
                     context: ForwarderContext) -> dict[str, NeededPath]:
        return {"path": NeededPath(Path(section["path"]), directory=False)}

    def open(self) -> None:
        self._path = Path(self.config["path"])
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._path.open("ab")

    @classmethod
    def prepare(cls, section: Mapping[str, Any], snapshot: Snapshot) -> list[Any]:
        """``[series covered, line...]``: one JSON line (bytes) per series of ``snapshot``;
        its events are written by :meth:`send_prepared`, after every series."""
        dumps = orjson.dumps
        return [len(snapshot.series),
                *[dumps(series_record(series, snapshot)) + b"\n" for series in snapshot.series]]

    def send(self, snapshot: Snapshot) -> None:
        self.send_prepared(snapshot, self.prepare(self.config, snapshot))

    def send_prepared(self, snapshot: Snapshot, prepared: list[Any]) -> None:
        """The prepared lines, then those of the series the preparation did not see and of
        the events: ``snapshot_records``' order, what :meth:`send` writes."""
        covered = prepared[0]
        rest = snapshot.series_from(covered)
        tail = [*[orjson.dumps(series_record(series, snapshot)) + b"\n" for series in rest],
                *[orjson.dumps(event_record(event, snapshot)) + b"\n"
                  for event in snapshot.events]]
        if self._file is None:  # a send that outlived close(): never reopen behind its back
            raise RuntimeError(f"{self._path} is closed")
        limit = self.config["max_bytes"]
        if limit and self._file.tell() and self._file.tell() + self._size(prepared,
                                                                         tail) > limit:
            self._rotate()
        assert self._file is not None
        # Joined and written WRITE_LINES at a time: one join of a million lines (~150 MB) held
        # the GIL ~140 ms, a pause for the receive thread; each write lets it go.
        for chunk in self._chunks(prepared, tail):
            self._file.write(b"".join(chunk))
        self._file.flush()

    @staticmethod
    def _chunks(prepared: list[Any], tail: list[bytes]) -> Iterator[list[bytes]]:
        """The lines :meth:`send_prepared` writes (``prepared`` past its count, then ``tail``),
        WRITE_LINES at a time."""
        for lines, start in ((prepared, 1), (tail, 0)):
            for at in range(start, len(lines), WRITE_LINES):
                yield lines[at:at + WRITE_LINES]

    @classmethod
    def _size(cls, prepared: list[Any], tail: list[bytes]) -> int:
        """The bytes :meth:`send_prepared` writes, summed a chunk at a time (one sum over
        a million lines would hold the GIL as long as a join)."""
        return sum(sum(map(len, chunk)) for chunk in cls._chunks(prepared, tail))

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        keep = self.config["backup_count"]
        for index in range(keep - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{index}")
            if older.exists():
                os.replace(older, self._path.with_name(f"{self._path.name}.{index + 1}"))
        if keep:
            os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))
        else:
            self._path.unlink()
        self._file = self._path.open("ab")

    def shutdown(self, timeout: float) -> int:
        if self._file is not None:
            self._file.close()
            self._file = None
        return 0
