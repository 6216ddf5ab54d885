"""A bounded, ordered, on-disk queue of messages a forwarder could not hand to its backend.

Shared by the forwarders that spool: Kafka (a record is a topic, key, value and idempotence
id), graphite and carbon routes (a record's value is the bytes to send; topic and key unused).

Layout: a directory of segment files named by a sequence number (``0000001000000000.seg``);
the oldest segment is read first. A segment starts with a 16-byte preamble, the magic
``PSSPOOL2`` and the *sent mark*: the byte offset (``>Q``) where its records not yet handed on
begin. Each record is a header ``>HiIB`` (topic length, key length or -1 for no key, value
length, message id length) followed by those bytes. New records go to the newest segment (a new
one past ``segment_bytes``); records that must go *before* everything spooled (messages whose
delivery timed out, or that were still in the producer at shutdown) get a new segment numbered
below the oldest.

Nothing handed on is sent again from the spool. The oldest segment is read through a file
descriptor kept open until it is used up; as records are handed on, :meth:`Spool.commit`
rewrites the sent mark in place (one 8-byte ``pwrite``), and a used-up segment gets a mark at
its end before it is unlinked. That needs neither a new file nor the directory to be writable:
when the directory cannot be written any more (made read-only, replaced, full), a segment that
cannot be removed still says it was sent, and the next start skips it (and tries to remove it
again). What cannot be written is counted (``io_errors``; records lost: ``io_lost``) and logged
at most once a minute, and never raises out of the spool once it is open.

The spool is not a write-ahead log: records are written when they spill, not before they are
produced, and appends are not fsynced; :meth:`close` fsyncs the marks and the newest segment. A
process killed with SIGKILL loses what was only in memory, exactly as it would without a spool.

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
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = ["Record", "Spool", "SpoolInUse"]

_LOCK_NAME = ".lock"

_MAGIC = b"PSSPOOL2"
_MARK = struct.Struct(">Q")
_PREAMBLE = len(_MAGIC) + _MARK.size
_HEADER = struct.Struct(">HiIB")
_FIRST_SEQUENCE = 10**15  # leaves room below for segments pushed to the front
_SUFFIX = ".seg"
_ERROR_LOG_INTERVAL = 60.0


class Record(NamedTuple):
    """One message: topic, key (or None), value and its idempotence id (Kafka's header);
    forwarders without topics or keys leave them empty."""

    topic: str
    key: bytes | None
    value: bytes
    message_id: bytes = b""

    def size(self) -> int:
        return (_HEADER.size + len(self.topic.encode()) + len(self.key or b"") + len(self.value)
                + len(self.message_id))


def _encode(record: Record) -> bytes:
    topic = record.topic.encode()
    key_len = -1 if record.key is None else len(record.key)
    return b"".join((_HEADER.pack(len(topic), key_len, len(record.value),
                                  len(record.message_id)),
                     topic, record.key or b"", record.value, record.message_id))


class SpoolInUse(OSError):
    """Another spool (this process's or another's) holds the directory."""


def _decode(data: bytes, offset: int) -> tuple[list[tuple[Record, int]], int]:
    """The whole records in ``data`` from ``offset``, each with the offset just past it, and
    the offset where the whole records end."""
    records: list[tuple[Record, int]] = []
    while offset + _HEADER.size <= len(data):
        topic_len, key_len, value_len, id_len = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        key_start = start + topic_len
        value_start = key_start + max(key_len, 0)
        id_start = value_start + value_len
        end = id_start + id_len
        if end > len(data):
            break
        key = None if key_len < 0 else data[key_start:value_start]
        records.append((Record(data[start:key_start].decode(), key,
                               data[value_start:id_start], data[id_start:end]), end))
        offset = end
    return records, offset


class _Segment(NamedTuple):
    """What a segment not loaded yet holds: records and their bytes (``Record.size``)."""

    records: int
    bytes: int


class Spool:
    """Given a directory and a size bound in bytes, keep records in order on disk.

    ``append`` and ``push_front`` return how many records they did not keep: because the bound
    was reached (only a full spool drops, and it drops the records being added, never the ones
    already spooled) or because the disk refused them (also counted in ``io_lost``)."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 4 << 20,
                 log: logging.Logger | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = log or logging.getLogger("pystatsd.forwarders.spool")
        self._lock_file: int | None = _lock_exclusively(self.directory / _LOCK_NAME)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.io_errors = 0
        """Spool reads and writes that failed (a running total)."""
        self.io_lost = 0
        """Records not kept because the disk refused them (a running total)."""
        self._error_logged_at: dict[str, float] = {}
        self._errors_not_logged: dict[str, int] = {}
        self._sizes: dict[int, _Segment] = {}
        self._segments: deque[int] = deque()
        for sequence in sorted(int(p.name[:-len(_SUFFIX)]) for p in
                               self.directory.glob("*" + _SUFFIX)
                               if p.name[:-len(_SUFFIX)].isdigit()):
            segment = self._scan(sequence)
            if segment is not None:
                self._sizes[sequence] = segment
                self._segments.append(sequence)
        self.bytes = sum(s.bytes for s in self._sizes.values())
        """Bytes of the records spooled (``Record.size`` each)."""
        self.records = sum(s.records for s in self._sizes.values())
        """Records spooled."""
        self._head: deque[tuple[Record, int]] = deque()  # each record, the offset past it
        self._head_sequence: int | None = None
        self._head_fd: int | None = None
        self._head_sent = 0  # offset of the first record not handed on
        self._head_marked = 0  # the sent mark as written in the file
        self._tail_fd: int | None = None
        self._tail_sequence: int | None = None
        self._tail_size = 0

    def _path(self, sequence: int) -> Path:
        return self.directory / f"{sequence:016d}{_SUFFIX}"

    def __bool__(self) -> bool:
        return self.records > 0

    def append(self, records: Iterable[Record]) -> int:
        """Add records after everything spooled; return how many were not kept."""
        blobs: list[bytes] = []
        dropped = size = 0
        for record in records:
            data = _encode(record)
            if self.bytes + size + len(data) > self.max_bytes:
                dropped += 1
                continue
            blobs.append(data)
            size += len(data)
        if blobs:
            kept = self._write_tail(blobs)
            dropped += len(blobs) - kept
        return dropped

    def push_front(self, records: list[Record]) -> int:
        """Add records before everything spooled, in the given order; return how many were not
        kept (when full, the newest of them are dropped first)."""
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
        self._put_head_back()
        lowest = min([*self._segments, self._tail_sequence or _FIRST_SEQUENCE, _FIRST_SEQUENCE])
        sequence = lowest - 1
        try:
            self._write_atomically(self._path(sequence), b"".join((_MAGIC, _MARK.pack(_PREAMBLE),
                                                                   *kept)))
        except OSError as exc:
            self._io_error(f"cannot write {len(kept)} records to the front of the spool", exc,
                           lost=len(kept))
            return len(records)
        self._segments.appendleft(sequence)
        self._sizes[sequence] = _Segment(len(kept), size)
        self.bytes += size
        self.records += len(kept)
        return dropped

    def peek(self) -> Record | None:
        """The oldest record, or None when the spool is empty."""
        if not self._head and not self._load_head():
            return None
        return self._head[0][0]

    def pop(self) -> None:
        """Remove the oldest record (call after :meth:`peek` returned it and it was handed on);
        :meth:`commit` makes that durable, and a used-up segment commits itself."""
        record, end = self._head.popleft()
        self._head_sent = end
        self.bytes -= record.size()
        self.records -= 1
        if not self._head:
            self._finish_head()

    def commit(self) -> None:
        """Write the oldest segment's sent mark, so a restart does not send again what was
        handed on since the last commit."""
        if self._head_fd is None or self._head_sent == self._head_marked:
            return
        try:
            os.pwrite(self._head_fd, _MARK.pack(self._head_sent), len(_MAGIC))
        except OSError as exc:
            self._io_error(f"cannot mark records sent in {self._path_of_head()}", exc)
            return
        self._head_marked = self._head_sent

    def close(self) -> None:
        """Commit and fsync the oldest segment, fsync the newest one, and give the directory
        up. Safe to call twice."""
        self._put_head_back()
        if self._tail_fd is not None:
            try:
                os.fsync(self._tail_fd)
            except OSError as exc:
                self._io_error("cannot fsync the newest spool segment", exc)
            os.close(self._tail_fd)
            self._tail_fd = None
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the flock
            self._lock_file = None

    # -- internals ----------------------------------------------------------------------
    def _io_error(self, what: str, exc: OSError, lost: int = 0) -> None:
        """Count a failed read or write and log it, once a minute per kind (lost messages are
        one kind, the rest another), saying how many were not logged."""
        self.io_errors += 1
        self.io_lost += lost
        kind = "lost" if lost else "other"
        now = time.monotonic()
        last = self._error_logged_at.get(kind)
        if last is not None and now - last < _ERROR_LOG_INTERVAL:
            self._errors_not_logged[kind] = self._errors_not_logged.get(kind, 0) + 1
            return
        skipped = self._errors_not_logged.pop(kind, 0)
        more = f" ({skipped} more like it since the last report)" if skipped else ""
        self._error_logged_at[kind] = now
        self._log.error("spool %s: %s: %s%s%s", self.directory, what, exc.strerror or exc,
                        f"; {lost} messages lost" if lost else "", more)

    def _path_of_head(self) -> Path:
        return self._path(self._head_sequence or 0)

    def _scan(self, sequence: int) -> _Segment | None:
        """How much a segment found at start-up still holds; None when it holds nothing (then
        it is removed) or cannot be read (then it is left for the operator)."""
        path = self._path(sequence)
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._io_error(f"cannot read {path}; left in place, not sent", exc)
            return None
        if len(data) < _PREAMBLE and _MAGIC.startswith(data):  # a preamble cut short
            self._remove(path)
            return None
        if not data.startswith(_MAGIC):
            self._log.warning("spool %s: %s is not a spool segment (no %r preamble); left in "
                              "place, not sent", self.directory, path.name, _MAGIC.decode())
            return None
        records, _ = _decode(data, _MARK.unpack_from(data, len(_MAGIC))[0])
        if not records:
            self._remove(path)
            return None
        return _Segment(len(records), sum(r.size() for r, _ in records))

    def _remove(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # it is marked sent: the next start skips it
            self._io_error(f"cannot remove the sent segment {path.name} (it is marked sent and "
                           "will not be sent again)", exc)

    def _write_tail(self, blobs: list[bytes]) -> int:
        """Write records to the newest segment; return how many were kept."""
        if self._tail_fd is None or self._tail_size >= self.segment_bytes:
            try:
                self._open_tail()
            except OSError as exc:
                self._io_error(f"cannot create a spool segment for {len(blobs)} records", exc,
                               lost=len(blobs))
                return 0
        assert self._tail_fd is not None and self._tail_sequence is not None
        data = b"".join(blobs)
        try:
            written = os.write(self._tail_fd, data)
            if written != len(data):
                raise OSError(0, f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            try:  # a partial record would hide every record written after it
                os.ftruncate(self._tail_fd, self._tail_size)
            except OSError:
                self._abandon_tail()  # what is before the partial record is still read
            self._io_error(f"cannot write {len(blobs)} records to the spool", exc,
                           lost=len(blobs))
            return 0
        self._tail_size += len(data)
        size = sum(len(blob) for blob in blobs)
        segment = self._sizes.get(self._tail_sequence, _Segment(0, 0))
        self._sizes[self._tail_sequence] = _Segment(segment.records + len(blobs),
                                                    segment.bytes + size)
        self.bytes += size
        self.records += len(blobs)
        return len(blobs)

    def _open_tail(self) -> None:
        self._abandon_tail()
        newest = max([*self._segments, self._head_sequence or 0, _FIRST_SEQUENCE - 1])
        sequence = newest + 1
        fd = os.open(self._path(sequence), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            if os.write(fd, _MAGIC + _MARK.pack(_PREAMBLE)) != _PREAMBLE:
                raise OSError(0, "short write of the segment preamble")
        except OSError:
            os.close(fd)
            try:
                self._path(sequence).unlink(missing_ok=True)
            except OSError:
                pass  # an empty or partial preamble is skipped at the next start
            raise
        self._tail_fd, self._tail_sequence, self._tail_size = fd, sequence, _PREAMBLE
        self._segments.append(sequence)

    def _abandon_tail(self) -> None:
        if self._tail_fd is not None:
            os.close(self._tail_fd)
        self._tail_fd = None
        self._tail_sequence = None

    def _load_head(self) -> bool:
        while self._segments:
            sequence = self._segments.popleft()
            segment = self._sizes.pop(sequence, _Segment(0, 0))
            self.records -= segment.records
            self.bytes -= segment.bytes
            if sequence == self._tail_sequence:
                # Reading the segment being written: new records start a new one.
                self._abandon_tail()
            path = self._path(sequence)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._io_error(f"cannot open {path.name}; left in place, not sent (it is sent "
                               "at a start that can open it)", exc)
                continue
            try:
                data = _read_all(fd)
            except OSError as exc:
                os.close(fd)
                self._io_error(f"cannot read {path.name}; left in place, not sent", exc)
                continue
            if len(data) < _PREAMBLE or not data.startswith(_MAGIC):
                os.close(fd)  # not ours (it was when it was listed): never write to it
                self._log.warning("spool %s: %s is not a spool segment; left in place, not "
                                  "sent", self.directory, path.name)
                continue
            sent = _MARK.unpack_from(data, len(_MAGIC))[0]
            records, end = _decode(data, sent)
            if end != len(data):
                self._log.warning("spool segment %s ends in a partial record (%d bytes "
                                  "ignored)", path, len(data) - end)
            self._head_fd, self._head_sequence = fd, sequence
            self._head_sent = self._head_marked = sent
            if not records:
                self._head_sent = end
                self._finish_head()
                continue
            self._head = deque(records)
            self.records += len(records)
            self.bytes += sum(r.size() for r, _ in records)
            return True
        return False

    def _finish_head(self) -> None:
        """The oldest segment is used up: mark it so, durably, then remove it."""
        self._head_sent = max(self._head_sent, self._head_marked)
        self.commit()
        if self._head_fd is not None:
            try:
                os.fsync(self._head_fd)
            except OSError as exc:
                self._io_error(f"cannot fsync {self._path_of_head()}", exc)
            os.close(self._head_fd)
        if self._head_sequence is not None:
            self._remove(self._path(self._head_sequence))
        self._head_fd = self._head_sequence = None
        self._head.clear()

    def _put_head_back(self) -> None:
        """Commit the loaded oldest segment and put it back on the segment list (before a
        segment is pushed to the front, and at close)."""
        if self._head_sequence is None:
            return
        self.commit()
        assert self._head_fd is not None
        try:
            os.fsync(self._head_fd)
        except OSError as exc:
            self._io_error(f"cannot fsync {self._path_of_head()}", exc)
        os.close(self._head_fd)
        self._segments.appendleft(self._head_sequence)
        self._sizes[self._head_sequence] = _Segment(len(self._head),
                                                    sum(r.size() for r, _ in self._head))
        self._head.clear()
        self._head_fd = self._head_sequence = None

    def _write_atomically(self, path: Path, data: bytes) -> None:
        temporary = path.with_suffix(".tmp")
        try:
            with open(temporary, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except OSError:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass
            raise


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


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
