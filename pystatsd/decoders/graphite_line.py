"""Graphite plaintext: ``path value timestamp`` lines, several per datagram or TCP chunk.

A datapoint becomes a gauge sample carrying the client's timestamp (the aggregation and the
relay decide what to do with it). The grammar is carbon's: three fields split on whitespace, a
path with optional graphite 1.1 tags (:mod:`pystatsd.decoders.graphite_tags`). Values and
timestamps follow the decoders' number grammar, so ``nan`` and ``inf``, which carbon would
drop anyway, are refused and counted here."""

from __future__ import annotations

import logging

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.graphite_tags import split_graphite_tags
from pystatsd.decoders.limits import MAX_LINE_BYTES, check_name, check_timestamp, parse_number
from pystatsd.decoders.payload import INTERNAL_ERRORS
from pystatsd.sample import GAUGE, Sample
from pystatsd.selfstats import SelfStats

__all__ = ["count_internal_error", "decode_graphite_payload", "parse_graphite_line"]

log = logging.getLogger("pystatsd.decoders")


def parse_graphite_line(line: bytes) -> Sample:
    """Given one plaintext line (no newline; surrounding whitespace ignored), return its
    datapoint as a gauge sample with the line's timestamp; raise :class:`DecodeError`."""
    if len(line) > MAX_LINE_BYTES:
        raise DecodeError("too_long", f"line of {len(line)} bytes (limit {MAX_LINE_BYTES})")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("not_utf8", f"byte {exc.start} is not UTF-8") from None
    fields = text.split()
    if len(fields) != 3:
        raise DecodeError("bad_line", f"{len(fields)} fields, not 'path value timestamp'")
    path, value_text, stamp_text = fields
    name, tags = split_graphite_tags(path)
    value = parse_number(value_text, "value")
    timestamp = check_timestamp(parse_number(stamp_text, "timestamp"))
    return Sample(check_name(name), GAUGE, value, 1.0, tags, False, timestamp)


def decode_graphite_payload(payload: bytes, stats: SelfStats) -> list[Sample]:
    """Given a datagram or a chunk of complete TCP lines, return the datapoint of every good
    line; count and log each bad one via ``stats.reject`` and drop it. Never raises."""
    samples: list[Sample] = []
    for line in payload.split(b"\n"):
        if not line.strip():
            continue
        try:
            samples.append(parse_graphite_line(line))
        except DecodeError as exc:
            stats.reject(exc.reason, "graphite: " + exc.detail, line)
        except Exception:  # a decoder bug must cost one line, never the datagram or the daemon
            count_internal_error(stats, "bad_line", line)
    return samples


def count_internal_error(stats: SelfStats, reason: str, piece: bytes) -> None:
    """Count and log an input that hit a bug in a decoder, as ``decode_payload`` does."""
    log.exception("decoder error on %r; dropped it", piece[:200])
    stats.incr(INTERNAL_ERRORS)
    stats.reject(reason, "decoder error (a bug: please report it)", piece)
