"""statsite's wire: its binary commands and statsd ASCII lines, mixed freely on one stream.

A command that starts with the magic byte 0xaa is binary (statsite's README, "Binary
Protocol"), all integers little-endian::

    0xaa <type:u8> <key length:u16> <value:f64> <key>               types 1, 2, 3, 5, 6
    0xaa 0x04      <key length:u16> <set length:u16> <key> <member>  type 4, a set

Key lengths include the key's NUL terminator. Types: 1 key/value (a gauge), 2 counter, 3 timer,
4 set, 5 gauge, 6 gauge delta. Anything else is an ASCII line up to the next newline, statsd's
grammar plus statsite's ``kv`` type (``name:value|kv``, a gauge that a sign does not make a
delta).

A binary frame whose layout is known (its type is 1-6) but whose content is bad (a key length
under 2, no NUL at the end of the key, a value that is not finite) is counted and skipped
whole, so what follows it is read as usual. A frame of an unknown type has no known length: the
bytes up to the next newline or magic byte are skipped with it. A frame cut short by the end of
a datagram (or of a connection) is counted as ``bad_line``.
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.graphite_line import count_internal_error
from pystatsd.decoders.limits import check_name
from pystatsd.decoders.statsd_line import parse_statsd_line
from pystatsd.sample import COUNTER, GAUGE, SET, TIMER, Sample
from pystatsd.selfstats import SelfStats

__all__ = ["MAGIC", "StatsiteCommand", "decode_statsite", "parse_statsite_command",
           "scan_statsite"]

MAGIC = 0xAA
_HEADER = struct.Struct("<BBH")
_VALUE = struct.Struct("<d")
_SET_LENGTH = struct.Struct("<H")
_SET_TYPE = 4
_TYPES = {1: GAUGE, 2: COUNTER, 3: TIMER, 4: SET, 5: GAUGE, 6: GAUGE}
_DELTA_TYPE = 6


class StatsiteCommand(NamedTuple):
    """One command cut from the stream: its bytes (a binary frame whole, an ASCII line
    without its newline), whether it is binary, and its key (what statsite-proxy hashes);
    ``error`` is set for a frame that is refused as a whole."""

    raw: bytes
    binary: bool
    key: bytes
    error: DecodeError | None = None


def scan_statsite(buffer: bytes, final: bool) -> tuple[list[StatsiteCommand], int]:
    """Cut ``buffer`` into commands; return them and how many bytes they took. Without
    ``final`` an incomplete command at the end is left for more bytes (TCP); with it, it is a
    truncated command (the end of a datagram or of a connection). Never raises."""
    commands: list[StatsiteCommand] = []
    pos = 0
    size = len(buffer)
    while pos < size:
        if buffer[pos] == MAGIC:
            end, command = _binary(buffer, pos)
            if end < 0:  # incomplete
                if not final:
                    break
                commands.append(StatsiteCommand(buffer[pos:], True, b"", DecodeError(
                    "bad_line", f"statsite binary frame truncated at {size - pos} bytes")))
                pos = size
                break
            commands.append(command)
            pos = end
            continue
        newline = buffer.find(b"\n", pos)
        if newline < 0:
            if not final:
                break
            newline = size
        line = buffer[pos:newline].strip()
        pos = newline + 1
        if line:
            commands.append(StatsiteCommand(line, False, line.partition(b":")[0]))
    return commands, min(pos, size)


def _binary(buffer: bytes, pos: int) -> tuple[int, StatsiteCommand]:
    """The frame at ``pos``: (its end, the command), or (-1, a placeholder) if incomplete."""
    incomplete = (-1, StatsiteCommand(b"", True, b""))
    if len(buffer) - pos < _HEADER.size:
        return incomplete
    _, kind, key_length = _HEADER.unpack_from(buffer, pos)
    if kind not in _TYPES:
        end = _resync(buffer, pos + 1)
        return end, StatsiteCommand(buffer[pos:end], True, b"", DecodeError(
            "unknown_type", f"statsite binary type {kind}"))
    body = pos + _HEADER.size
    if kind == _SET_TYPE:
        if len(buffer) - body < _SET_LENGTH.size:
            return incomplete
        (member_length,) = _SET_LENGTH.unpack_from(buffer, body)
        key_start = body + _SET_LENGTH.size
        end = key_start + key_length + member_length
    else:
        member_length = 0
        key_start = body + _VALUE.size
        end = key_start + key_length
    if end > len(buffer):
        return incomplete
    key = buffer[key_start:key_start + key_length]
    raw = buffer[pos:end]
    error = None
    if key_length < 2:
        error = DecodeError("missing_field", f"statsite key length {key_length} (the NUL "
                                             "included) leaves no key")
    elif key[-1] != 0:
        error = DecodeError("bad_line", "statsite key without its NUL terminator")
    elif kind == _SET_TYPE and (member_length < 2 or buffer[end - 1] != 0):
        error = DecodeError("bad_line", "statsite set member empty or without its NUL")
    return end, StatsiteCommand(raw, True, key[:-1] if error is None else b"", error)


def _resync(buffer: bytes, start: int) -> int:
    """Where reading goes on after a frame of unknown length: the next newline (past it) or
    the next magic byte, whichever comes first."""
    newline = buffer.find(b"\n", start)
    magic = buffer.find(bytes((MAGIC,)), start)
    candidates = [at for at in (newline + 1 if newline >= 0 else -1, magic) if at >= 0]
    return min(candidates) if candidates else len(buffer)


def parse_statsite_command(command: StatsiteCommand) -> list[Sample]:
    """The samples of one command; raise :class:`DecodeError` for a bad one."""
    if command.error is not None:
        raise command.error
    if not command.binary:
        return _ascii(command.raw)
    raw = command.raw
    _, kind, key_length = _HEADER.unpack_from(raw)
    try:
        name = check_name(command.key.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DecodeError("not_utf8", f"byte {exc.start} of a statsite key is not UTF-8") \
            from None
    if kind == _SET_TYPE:
        member = raw[_HEADER.size + _SET_LENGTH.size + key_length:-1]
        try:
            return [Sample(name, SET, member.decode("utf-8"))]
        except UnicodeDecodeError as exc:
            raise DecodeError("not_utf8", f"byte {exc.start} of a set member is not UTF-8") \
                from None
    (value,) = _VALUE.unpack_from(raw, _HEADER.size)
    if not math.isfinite(value):
        raise DecodeError("bad_value", f"statsite value {value!r} is not finite")
    return [Sample(name, _TYPES[kind], value, 1.0, (), kind == _DELTA_TYPE)]


def _ascii(line: bytes) -> list[Sample]:
    head, bar, rest = line.partition(b"|")
    if bar and (rest == b"kv" or rest.startswith(b"kv|")):
        # statsite's key/value: a plain value, kept like a gauge's; a sign is not a delta
        samples = parse_statsd_line(head + b"|g" + rest[2:])
        return [sample._replace(delta=False) for sample in samples]
    return parse_statsd_line(line)


def decode_statsite(buffer: bytes, stats: SelfStats, final: bool = True) -> tuple[list[Sample],
                                                                                 int]:
    """Given a datagram (``final``) or the bytes a connection has sent so far, return the
    samples of every good command and how many bytes were used; count and log each bad
    command and drop it. Never raises."""
    commands, used = scan_statsite(buffer, final)
    samples: list[Sample] = []
    for command in commands:
        try:
            samples.extend(parse_statsite_command(command))
        except DecodeError as exc:
            stats.reject(exc.reason, "statsite: " + exc.detail, command.raw)
        except Exception:  # a decoder bug costs one command, never the stream or the daemon
            count_internal_error(stats, "bad_line", command.raw)
    return samples, used
