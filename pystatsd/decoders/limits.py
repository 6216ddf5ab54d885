"""Limits and value checks shared by the statsd and JSON decoders."""

from __future__ import annotations

import math
import re

from pystatsd.decoders.errors import DecodeError

MAX_NAME_BYTES = 1024
"""A metric name longer than this (UTF-8 bytes, InfluxDB-style tags not included) is rejected as
``too_long``: far above any real name, low enough that a runaway client that pastes a payload
into the name cannot fill memory with one-off series."""

MAX_LINE_BYTES = 65536
"""A statsd line longer than this is rejected as ``too_long`` before it is parsed; a UDP
datagram cannot be longer anyway, so this only bites on TCP."""

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
"""A plain decimal number. ``float()`` alone would also take ``1_000``, `` 1 ``, ``nan`` and
``infinity``, none of which a statsd client means as a value."""


def parse_number(text: str, what: str) -> float:
    """Given the text of a number, return it as a finite float or raise ``bad_value``."""
    if _NUMBER.fullmatch(text) is None:
        raise DecodeError("bad_value", f"{what} {text[:40]!r} is not a number")
    number = float(text)
    if not math.isfinite(number):
        raise DecodeError("bad_value", f"{what} {text[:40]!r} is out of range")
    return number


def check_rate(rate: float) -> float:
    """Return ``rate`` if it is a sample rate in (0, 1], else raise ``bad_value``."""
    if not 0.0 < rate <= 1.0:
        raise DecodeError("bad_value", f"sample rate {rate!r} is not in (0, 1]")
    return rate


def check_timestamp(timestamp: float) -> float:
    """Return ``timestamp`` (seconds since the epoch) if it is not negative, else raise."""
    if timestamp < 0.0:
        raise DecodeError("bad_value", f"timestamp {timestamp!r} is negative")
    return timestamp


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str) -> str:
    """Return ``name`` if it is non-empty, within :data:`MAX_NAME_BYTES` and free of control
    characters (a newline in a name would split every line-based output), else raise."""
    if not name:
        raise DecodeError("missing_field", "empty metric name")
    if _CONTROL.search(name) is not None:
        raise DecodeError("bad_value", f"control character in metric name {name[:80]!r}")
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise DecodeError("too_long", f"metric name of {len(name.encode('utf-8'))} bytes "
                                      f"(limit {MAX_NAME_BYTES})")
    return name
