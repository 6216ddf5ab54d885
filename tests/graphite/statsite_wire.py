"""An encoder for statsite's binary protocol, written from statsite's README ("Binary
Protocol") and nothing else, so the decoder is checked against the spec, not against itself."""

from __future__ import annotations

import struct

MAGIC = 0xAA
KEY_VALUE, COUNTER, TIMER, SET, GAUGE, GAUGE_DELTA = 1, 2, 3, 4, 5, 6


def frame(kind: int, key: str, value: float) -> bytes:
    """<Magic Byte><Metric Type><Key Length> then <Value><Key>; little-endian; the key length
    counts the NUL terminator."""
    encoded = key.encode() + b"\0"
    return struct.pack("<BBHd", MAGIC, kind, len(encoded), value) + encoded


def set_frame(key: str, member: str) -> bytes:
    """<Magic Byte><Metric Type><Key Length> then <Set Length><Key><Set Key>."""
    encoded_key = key.encode() + b"\0"
    encoded_member = member.encode() + b"\0"
    return (struct.pack("<BBHH", MAGIC, SET, len(encoded_key), len(encoded_member))
            + encoded_key + encoded_member)
