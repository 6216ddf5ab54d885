"""Graphite pickle: frames of a 4-byte big-endian length and a pickled list of
``(path, (timestamp, value))``, as carbon's pickle receiver takes them.

Client bytes are never given to ``pickle.loads``. :class:`_DataOnlyUnpickler` refuses every
global (``find_class``) and persistent id, so the only objects a frame can build are the ones
pickle makes without calling anything: lists, tuples, dicts, strings, bytes, numbers, None and
booleans. A ``__reduce__`` payload names a callable through ``find_class`` and is refused there,
before anything runs. What is built is then checked item by item: a bad datapoint costs itself,
a frame that is not a list (or does not unpickle) costs the frame."""

from __future__ import annotations

import io
import math
import pickle
import struct
from typing import Any

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.graphite_line import count_internal_error
from pystatsd.decoders.graphite_tags import split_graphite_tags
from pystatsd.decoders.limits import check_name, check_timestamp, parse_number
from pystatsd.sample import GAUGE, Sample
from pystatsd.selfstats import SelfStats

__all__ = ["MAX_PICKLE_FRAME_BYTES", "PickleFrames", "decode_pickle_frame", "parse_pickle_frame"]

MAX_PICKLE_FRAME_BYTES = 1 << 20
"""A frame announcing more than this is refused (``too_long``) and its connection closed: carbon's
own default (PICKLE_RECEIVER_MAX_LENGTH), and the bound on what one client can make us buffer."""

_LENGTH = struct.Struct(">I")


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent id refused")


def _unpickle(body: bytes) -> Any:
    try:
        # encoding: a Python 2 client's str arrives as bytes-like text; carbon reads it as text.
        return _DataOnlyUnpickler(io.BytesIO(body), encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise DecodeError("bad_line", f"pickle frame refused: {type(exc).__name__}: "
                                      f"{str(exc)[:80]}") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise DecodeError("bad_value", f"{what} is a boolean")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise DecodeError("bad_value", f"{what} is out of range") from None
        if not math.isfinite(number):
            raise DecodeError("bad_value", f"{what} {number!r} is out of range")
        return number
    if isinstance(value, str):  # carbon takes float("1.5") too
        return parse_number(value.strip(), what)
    raise DecodeError("bad_value", f"{what} is a {type(value).__name__}")


def _datapoint(item: Any) -> Sample:
    if not (isinstance(item, list | tuple) and len(item) == 2
            and isinstance(item[1], list | tuple) and len(item[1]) == 2):
        raise DecodeError("bad_line", "pickle item is not (path, (timestamp, value))")
    path, (stamp, value) = item
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("not_utf8", f"byte {exc.start} of a path is not UTF-8") from None
    if not isinstance(path, str):
        raise DecodeError("bad_line", f"pickle path is a {type(path).__name__}")
    if path != path.strip() or any(c.isspace() for c in path):
        # carbon's plaintext has no room for it, and a relay must never forge a line from it
        raise DecodeError("bad_value", f"whitespace in graphite path {path[:80]!r}")
    name, tags = split_graphite_tags(path)
    timestamp = check_timestamp(_number(stamp, "timestamp"))
    return Sample(check_name(name), GAUGE, _number(value, "value"), 1.0, tags, False, timestamp)


def parse_pickle_frame(body: bytes) -> tuple[list[Sample], list[DecodeError]]:
    """Given one frame's body (without its length), return its good datapoints as gauge samples
    with their timestamps, and a :class:`DecodeError` per bad item; raise :class:`DecodeError`
    when the frame as a whole is refused (not a pickle, a refused object, not a list)."""
    document = _unpickle(body)
    if not isinstance(document, list | tuple):
        raise DecodeError("bad_line", f"pickle frame holds a {type(document).__name__}, "
                                      "not a list of datapoints")
    samples: list[Sample] = []
    errors: list[DecodeError] = []
    for item in document:
        try:
            samples.append(_datapoint(item))
        except DecodeError as exc:
            errors.append(exc)
    return samples, errors


def decode_pickle_frame(body: bytes, stats: SelfStats) -> list[Sample]:
    """:func:`parse_pickle_frame` with every refusal counted and logged. Never raises."""
    try:
        samples, errors = parse_pickle_frame(body)
    except DecodeError as exc:
        stats.reject(exc.reason, "graphite pickle: " + exc.detail, body)
        return []
    except Exception:  # a decoder bug costs the frame, never the connection or the daemon
        count_internal_error(stats, "bad_line", body)
        return []
    for error in errors:
        stats.reject(error.reason, "graphite pickle: " + error.detail, body)
    return samples


class PickleFrames:
    """Cuts a TCP byte stream into frame bodies. ``feed`` returns the complete bodies so far;
    ``refused`` turns true (and stays) once a frame announces more than ``max_bytes``: the
    stream cannot be trusted past it, so the caller closes the connection."""

    def __init__(self, max_bytes: int = MAX_PICKLE_FRAME_BYTES) -> None:
        self.max_bytes = max_bytes
        self.refused = False
        self.announced = 0
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.refused:
            return []
        self._buffer += chunk
        bodies: list[bytes] = []
        start = 0
        buffer = self._buffer
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self.max_bytes:
                self.refused = True
                self.announced = length
                break
            end = start + _LENGTH.size + length
            if end > len(buffer):
                break
            bodies.append(bytes(buffer[start + _LENGTH.size:end]))
            start = end
        del buffer[:start]
        return bodies

    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held (at the end of a connection: a truncated frame)."""
        return len(self._buffer)
