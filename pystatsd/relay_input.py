"""What relay forwarders are handed: a payload's lines, with JSON input made into statsd lines.

The relay wire is statsd, so JSON metrics (the old agent's datagrams) are decoded here, on the
receive path, by the same rules the aggregating daemon applies
(:func:`pystatsd.decoders.parse_json_object`), and re-encoded by
:func:`pystatsd.statsd_encoding.sample_to_statsd_lines`. Relay forwarders never decode
anything themselves; they get these lines flagged ``from_json`` so that one configured to
refuse JSON input can. A pretty-printed JSON document spread over a datagram's lines is one
document. A line that starts like JSON but is not (a statsd name may start with ``{``) is
relayed as it is when it reads as a statsd line.
"""

from __future__ import annotations

import orjson

from pystatsd.decoders import DecodeError, parse_json_object, parse_statsd_line
from pystatsd.selfstats import SelfStats
from pystatsd.statsd_encoding import Unencodable, sample_to_statsd_lines

__all__ = ["RelayInput"]

_JSON_OPENERS = (b"{", b"[")


class RelayInput:
    """Splits payloads for relay forwarders. ``count_decode_rejects`` is true when nothing
    else decodes the payload (``mode: relay``), so bad JSON is counted here exactly once;
    refusals that only relaying has (``statsd_syntax``) are always counted here."""

    def __init__(self, stats: SelfStats, count_decode_rejects: bool) -> None:
        self._stats = stats
        self._count_decode_rejects = count_decode_rejects

    def split(self, lines: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Given a payload's lines, return (statsd lines as received, lines made from JSON)."""
        if not any(line[:1] in _JSON_OPENERS for line in lines):
            return lines, []
        if len(lines) > 1 and lines[0][:1] in _JSON_OPENERS:
            try:
                document = orjson.loads(b"\n".join(lines))
            except orjson.JSONDecodeError:
                pass  # one document per line, or statsd lines: taken line by line below
            else:
                return [], self._convert(document, b"\n".join(lines))
        plain: list[bytes] = []
        converted: list[bytes] = []
        for line in lines:
            if line[:1] not in _JSON_OPENERS:
                plain.append(line)
                continue
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError:
                if _is_statsd_line(line):
                    plain.append(line)
                else:
                    self._decode_reject("bad_json", "not valid JSON", line)
                continue
            converted.extend(self._convert(document, line))
        return plain, converted

    def _convert(self, document: object, raw: bytes) -> list[bytes]:
        objects = document if isinstance(document, list) else [document]
        out: list[bytes] = []
        for obj in objects:
            try:
                sample = parse_json_object(obj)  # type: ignore[arg-type]
            except DecodeError as exc:
                self._decode_reject(exc.reason, exc.detail, raw)
                continue
            except Exception:  # a decoder bug costs this object, never the relay
                self._decode_reject("bad_json", "decoder error", raw)
                continue
            try:
                out.extend(sample_to_statsd_lines(sample))
            except Unencodable as exc:
                self._stats.reject("statsd_syntax", str(exc), raw)
        return out

    def _decode_reject(self, reason: str, detail: str, raw: bytes) -> None:
        if self._count_decode_rejects:
            self._stats.reject(reason, detail, raw)


def _is_statsd_line(line: bytes) -> bool:
    try:
        return bool(parse_statsd_line(line))
    except Exception:  # DecodeError, or a decoder bug: either way not a line to relay
        return False
