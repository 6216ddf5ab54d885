"""Appends each flush to a file as JSON lines, rotating it by size.

Rotation is a dozen lines written here rather than borrowed from logging's
RotatingFileHandler, which wants LogRecords and a logger around what is plain data."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import orjson

from forwarders.aggregate import AggregateForwarder
from forwarders.base import ForwarderContext, NeededPath
from forwarders.records import snapshot_records
from pystatsd.snapshot import Snapshot


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

    def send(self, snapshot: Snapshot) -> None:
        data = b"".join(orjson.dumps(r) + b"\n" for r in snapshot_records(snapshot))
        if self._file is None:  # a send that outlived close(): never reopen behind its back
            raise RuntimeError(f"{self._path} is closed")
        limit = self.config["max_bytes"]
        if limit and self._file.tell() and self._file.tell() + len(data) > limit:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()

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
