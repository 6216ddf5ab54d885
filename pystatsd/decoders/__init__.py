"""Decoders: bytes from a listener -> :class:`~pystatsd.sample.Sample`.

Two wire formats, chosen by content: JSON objects, and statsd / DogStatsD lines (with
InfluxDB-style name tags). The accepted grammar is documented in docs/input-formats.md.
Samples come out without the agent's tags; the tagger adds those."""

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.json_object import parse_json_object
from pystatsd.decoders.limits import MAX_LINE_BYTES, MAX_NAME_BYTES
from pystatsd.decoders.payload import INTERNAL_ERRORS, decode_payload
from pystatsd.decoders.statsd_line import parse_statsd_line

__all__ = [
    "DecodeError",
    "INTERNAL_ERRORS",
    "MAX_LINE_BYTES",
    "MAX_NAME_BYTES",
    "decode_payload",
    "parse_json_object",
    "parse_statsd_line",
]
