"""A bounded, ordered, on-disk queue of Kafka messages that could not be handed to the broker.

Layout: a directory of segment files named by a sequence number (``0000001000000000.seg``);
the oldest segment is read first. Each record is a header ``>HiI`` (topic length, key length or
-1 for no key, value length) followed by those bytes. New records go to the newest segment (a
new one past ``segment_bytes``); records that must go *before* everything spooled (messages
whose delivery timed out, or that were still in the producer at shutdown) get a new segment
numbered below the oldest.

The spool is not a write-ahead log: records are written when they spill, not before they are
produced, and files are flushed (not fsynced) per append; :meth:`close` fsyncs. A process
killed with SIGKILL loses what was only in memory, exactly as it would without a spool.

One directory has one user at a time: the spool holds an exclusive ``flock`` on
``<directory>/.lock`` from the constructor to :meth:`Spool.close`, so a second forwarder (in
this process or in another daemon with the same ``state_dir``) is refused with
:class:`SpoolInUse` instead of both writing the same segment numbers. The daemon never runs two
instances of one forwarder section at once (see ``forwarders.base``), so a reload does not need
to share a spool. A spool is not thread-safe: its owner serializes every call.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, NamedTuple

__all__ = ["Record", "Spool", "SpoolInUse"]

_LOCK_NAME = ".lock"

_HEADER = struct.Struct(">HiI")
_FIRST_SEQUENCE = 10**15  # leaves room below for segments pushed to the front
_SUFFIX = ".seg"


class Record(NamedTuple):
    """One Kafka message: topic, key (or None) and value."""

    topic: str
    key: bytes | None
    value: bytes

    def size(self) -> int:
        return _HEADER.size + len(self.topic.encode()) + len(self.key or b"") + len(self.value)


def _encode(record: Record) -> bytes:
    topic = record.topic.encode()
    key_len = -1 if record.key is None else len(record.key)
    return b"".join((_HEADER.pack(len(topic), key_len, len(record.value)), topic,
                     record.key or b"", record.value))


class SpoolInUse(OSError):
    """Another spool (this process's or another's) holds the directory."""


def _decode_all(data: bytes, path: Path, log: logging.Logger) -> list[Record]:
    records: list[Record] = []
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            break
        topic_len, key_len, value_len = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + topic_len + max(key_len, 0) + value_len
        if end > len(data):
            break
        topic = data[start:start + topic_len].decode()
        key_end = start + topic_len + max(key_len, 0)
        key = None if key_len < 0 else data[start + topic_len:key_end]
        records.append(Record(topic, key, data[key_end:end]))
        offset = end
    if offset != len(data):
        log.warning("spool segment %s ends in a partial record (%d bytes ignored)", path,
                    len(data) - offset)
    return records


class Spool:
    """Given a directory and a size bound in bytes, keep records in order on disk.

    ``append`` and ``push_front`` return how many records they dropped because the bound was
    reached: only a full spool drops, and it drops the records being added, never the ones
    already spooled."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 4 << 20,
                 log: logging.Logger | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = log or logging.getLogger("pystatsd.forwarders.spool")
        self._lock_file: int | None = _lock_exclusively(self.directory / _LOCK_NAME)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._segments: deque[int] = deque(sorted(
            int(p.name[:-len(_SUFFIX)]) for p in self.directory.glob("*" + _SUFFIX)
            if p.name[:-len(_SUFFIX)].isdigit()
        ))
        self.bytes = sum(self._path(s).stat().st_size for s in self._segments)
        self._head: deque[Record] = deque()
        self._head_sequence: int | None = None
        self._head_consumed = False
        self._tail: BinaryIO | None = None
        self._tail_sequence: int | None = None
        self._tail_size = 0

    def _path(self, sequence: int) -> Path:
        return self.directory / f"{sequence:016d}{_SUFFIX}"

    def __bool__(self) -> bool:
        return bool(self._head) or bool(self._segments)

    def append(self, records: Iterable[Record]) -> int:
        """Add records after everything spooled; return how many did not fit."""
        dropped = 0
        for record in records:
            data = _encode(record)
            if self.bytes + len(data) > self.max_bytes:
                dropped += 1
                continue
            if self._tail is None or self._tail_size >= self.segment_bytes:
                self._open_tail()
            assert self._tail is not None
            self._tail.write(data)
            self._tail_size += len(data)
            self.bytes += len(data)
        if self._tail is not None:
            self._tail.flush()
        return dropped

    def push_front(self, records: list[Record]) -> int:
        """Add records before everything spooled, in the given order; return how many did not
        fit (the newest of them are dropped first)."""
        kept: list[bytes] = []
        size = 0
        for record in records:
            data = _encode(record)
            if self.bytes + size + len(data) > self.max_bytes:
                break
            kept.append(data)
            size += len(data)
        dropped = len(records) - len(kept)
        if not kept:
            return dropped
        self._persist_head()
        lowest = min([*self._segments, self._tail_sequence or _FIRST_SEQUENCE, _FIRST_SEQUENCE])
        sequence = lowest - 1
        self._write_atomically(self._path(sequence), b"".join(kept))
        self._segments.appendleft(sequence)
        self.bytes += size
        return dropped

    def peek(self) -> Record | None:
        """The oldest record, or None when the spool is empty."""
        if not self._head and not self._load_head():
            return None
        return self._head[0]

    def pop(self) -> None:
        """Remove the oldest record (call after :meth:`peek` returned it and it was handed on)."""
        record = self._head.popleft()
        self._head_consumed = True
        self.bytes -= record.size()
        if not self._head and self._head_sequence is not None:
            self._path(self._head_sequence).unlink(missing_ok=True)
            self._head_sequence = None
            self._head_consumed = False

    def close(self) -> None:
        """Write back a partly sent oldest segment, fsync the newest one, and give the
        directory up. Safe to call twice."""
        self._persist_head()
        if self._tail is not None:
            self._tail.flush()
            os.fsync(self._tail.fileno())
            self._tail.close()
            self._tail = None
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None

    # -- internals ----------------------------------------------------------------------
    def _open_tail(self) -> None:
        if self._tail is not None:
            self._tail.close()
        newest = max([*self._segments, self._head_sequence or 0, _FIRST_SEQUENCE - 1])
        self._tail_sequence = newest + 1
        self._tail = open(self._path(self._tail_sequence), "ab")  # noqa: SIM115 (kept open)
        self._tail_size = 0
        self._segments.append(self._tail_sequence)

    def _load_head(self) -> bool:
        while self._segments:
            sequence = self._segments.popleft()
            if sequence == self._tail_sequence and self._tail is not None:
                # Reading the segment being written: close it so new records start a new one.
                self._tail.close()
                self._tail = None
                self._tail_sequence = None
            path = self._path(sequence)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            records = _decode_all(data, path, self._log)
            # Bytes of a trailing partial record will never be sent; stop counting them.
            self.bytes -= len(data) - sum(r.size() for r in records)
            if not records:
                path.unlink(missing_ok=True)
                continue
            self._head = deque(records)
            self._head_sequence = sequence
            self._head_consumed = False
            return True
        return False

    def _persist_head(self) -> None:
        """Put the loaded oldest segment back on the segment list, rewritten without the
        records already sent, so a restart does not send them twice."""
        if self._head_sequence is None:
            return
        path = self._path(self._head_sequence)
        if self._head_consumed:
            self._write_atomically(path, b"".join(_encode(r) for r in self._head))
        self._segments.appendleft(self._head_sequence)
        self._head.clear()
        self._head_sequence = None
        self._head_consumed = False

    def _write_atomically(self, path: Path, data: bytes) -> None:
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)


def _lock_exclusively(path: Path) -> int:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise SpoolInUse(f"spool {path.parent} is in use by another forwarder (another section "
                         "with the same spool_dir, or another pystatsd with the same "
                         "state_dir)") from None
    return descriptor
