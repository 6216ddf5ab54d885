"""One datagram or TCP chunk -> samples, with every bad piece counted and dropped."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from pystatsd.decoders.errors import DecodeError
from pystatsd.decoders.events import is_event_line, parse_event_line
from pystatsd.decoders.json_object import parse_json_object
from pystatsd.decoders.statsd_line import parse_statsd_line
from pystatsd.sample import Sample
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import Event

log = logging.getLogger("pystatsd.decoders")

INTERNAL_ERRORS = "decoder.internal_errors"
"""Self-stat counting inputs that hit a bug in a decoder (an exception other than
:class:`DecodeError`). Such an input is dropped and counted under its reject reason too, so the
daemon keeps running; a non-zero value here is a bug to report."""

_JSON_START = (ord("{"), ord("["))


def decode_payload(payload: bytes, stats: SelfStats, absolute_gauges: bool = False,
                   container_tag: str = "", events: list[Event] | None = None) -> list[Sample]:
    """Given one UDP datagram or a chunk of complete TCP lines, return the samples of every good
    line or object in it; count and log each bad one via ``stats.reject`` and drop it.

    JSON if the first non-space byte is ``{`` or ``[`` (one object, an array of objects, or
    several objects one per line), else newline-separated statsd lines. ``absolute_gauges``
    and ``container_tag`` are passed to :func:`parse_statsd_line`. DogStatsD events and
    service checks are decoded into ``events`` when it is given, else counted as
    ``not_metric``. Never raises."""
    samples: list[Sample] = []
    body = payload.lstrip()
    if body[:1] and body[0] in _JSON_START:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # not one document: perhaps one object per line, decoded line by line below
        else:
            _decode_json_document(document, body, samples, stats)
            return samples
    for line in payload.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            if events is not None and is_event_line(line):
                events.append(parse_event_line(line))
            elif line[0] in _JSON_START:
                _decode_json_line(line, samples, stats, absolute_gauges, container_tag)
            else:
                samples.extend(parse_statsd_line(line, absolute_gauges, container_tag))
        except DecodeError as exc:
            stats.reject(exc.reason, exc.detail, line)
        except Exception:  # a decoder bug must cost one line, never the datagram or the daemon
            _internal_error(stats, "bad_line", line)
    return samples


def _decode_json_line(line: bytes, samples: list[Sample], stats: SelfStats,
                      absolute_gauges: bool, container_tag: str) -> None:
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        try:  # a statsd name may start with '{' or '[' too
            samples.extend(parse_statsd_line(line, absolute_gauges, container_tag))
            return
        except DecodeError:
            pass
        reason = "bad_json" if _is_utf8(line) else "not_utf8"
        stats.reject(reason, f"JSON: {exc}", line)
        return
    _decode_json_document(document, line, samples, stats)


def _decode_json_document(document: Any, raw: bytes, samples: list[Sample],
                          stats: SelfStats) -> None:
    """Append the sample of each object in ``document`` (an object or an array of them)."""
    objects = document if isinstance(document, list) else [document]
    for index, obj in enumerate(objects):
        try:
            samples.append(parse_json_object(obj))
        except DecodeError as exc:
            where = f" (array item {index})" if isinstance(document, list) else ""
            stats.reject(exc.reason, exc.detail + where, raw)
        except Exception:
            _internal_error(stats, "bad_json", raw)


def _internal_error(stats: SelfStats, reason: str, piece: bytes) -> None:
    log.exception("decoder error on %r; dropped it", piece[:200])
    stats.incr(INTERNAL_ERRORS)
    stats.reject(reason, "decoder error (a bug: please report it)", piece)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
