"""Listener formats other than statsd: how their bytes are cut, decoded and relayed.

A listener's ``format`` says what its clients speak:

* ``statsd``: statsd / DogStatsD lines and JSON (the receive path's own fast path);
* ``graphite``: carbon plaintext ``path value timestamp`` lines (TCP and UDP);
* ``graphite_pickle``: carbon's pickle frames (TCP);
* ``statsite``: statsite's ASCII lines and binary commands, mixed (TCP and UDP).

Everything format-specific is here so that the listeners, the pipeline and the daemon only
dispatch on the name: :func:`make_framer` cuts a TCP stream into payloads of whole units (a
UDP datagram is one payload as it is), :func:`decode` turns a payload into samples (a graphite
datapoint is a gauge that keeps the client's timestamp; what a graphite listener does with it
is pystatsd.graphite_ingest), and :func:`relay_items` into what a
relay of the matching input takes (:func:`relay_accepts`): graphite plaintext lines for a relay
whose ``INPUT_FORMAT`` is ``graphite`` (``carbon_routes``; pickle datapoints become plaintext
lines, timestamps kept), statsite commands for one whose ``INPUT_FORMAT`` is ``statsite``
(``statsite_proxy``). Relays without ``INPUT_FORMAT`` take statsd lines only."""

from __future__ import annotations

from typing import Protocol

from pystatsd.decoders.graphite_line import decode_graphite_payload
from pystatsd.decoders.graphite_pickle import (
    PickleFrames,
    decode_pickle_frame,
    parse_pickle_frame,
)
from pystatsd.decoders.statsite import decode_statsite, scan_statsite
from pystatsd.sample import Sample
from pystatsd.selfstats import SelfStats

__all__ = ["FORMATS", "Framer", "decode", "make_framer", "relay_accepts", "relay_items"]

FORMATS = ("statsd", "graphite", "graphite_pickle", "statsite")

_LENGTH_BYTES = 4


class Framer(Protocol):
    """Cuts one TCP connection's bytes into payloads of whole units."""

    closed: bool
    """True once the stream cannot be trusted further: the listener closes the connection."""

    def feed(self, chunk: bytes) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...


class _LineFramer:
    """Newline-delimited units (graphite plaintext): a line over ``limit`` is refused."""

    def __init__(self, limit: int, stats: SelfStats) -> None:
        self.limit = limit
        self.stats = stats
        self.closed = False
        self._pending = b""
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk
        cut = data.rfind(b"\n")
        out: list[bytes] = []
        if cut >= 0:
            complete, self._pending = data[:cut], data[cut + 1:]
            if self._skipping:  # the rest of an over-long line ends at the first newline
                complete = complete.partition(b"\n")[2]
                self._skipping = False
            kept = [line for line in complete.split(b"\n") if self._fits(line)]
            if kept:
                out.append(b"\n".join(kept))
        else:
            self._pending = data
        if len(self._pending) > self.limit:
            if not self._skipping:
                self.stats.reject("too_long", f"tcp line over {self.limit} bytes", self._pending)
            self._skipping, self._pending = True, b""
        return out

    def _fits(self, line: bytes) -> bool:
        if len(line) <= self.limit:
            return True
        self.stats.reject("too_long", f"tcp line over {self.limit} bytes", line)
        return False

    def finish(self) -> list[bytes]:
        rest, self._pending = self._pending, b""
        return [rest] if rest.strip() and not self._skipping else []


class _PickleFramer:
    """Carbon pickle frames: each payload is one frame's body."""

    def __init__(self, stats: SelfStats) -> None:
        self.stats = stats
        self.closed = False
        self._frames = PickleFrames()

    def feed(self, chunk: bytes) -> list[bytes]:
        bodies = self._frames.feed(chunk)
        if self._frames.refused and not self.closed:
            self.closed = True
            self.stats.reject("too_long", f"pickle frame announcing {self._frames.announced} "
                                          f"bytes (limit {self._frames.max_bytes}); connection "
                                          "closed")
        return bodies

    def finish(self) -> list[bytes]:
        if self._frames.pending_bytes() and not self.closed:
            self.stats.reject("bad_line", f"pickle frame cut at {self._frames.pending_bytes()} "
                                          "bytes by the end of the connection")
        return []


class _StatsiteFramer:
    """statsite commands: a payload is a run of whole commands (binary frames may hold
    newlines, so the cut is statsite's, not a newline)."""

    def __init__(self, limit: int, stats: SelfStats) -> None:
        self.limit = limit
        self.stats = stats
        self.closed = False
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk
        _, used = scan_statsite(data, final=False)
        self._buffer = data[used:]
        if len(self._buffer) > self.limit + 65536 * 2 + 8:  # no line or frame is that long
            self.stats.reject("too_long", f"statsite command over {self.limit} bytes",
                              self._buffer)
            self.closed = True
            self._buffer = b""
        return [data[:used]] if used else []

    def finish(self) -> list[bytes]:
        rest, self._buffer = self._buffer, b""
        return [rest] if rest else []  # decode() counts a truncated frame


def make_framer(fmt: str, limit: int, stats: SelfStats) -> Framer:
    """The framer of a TCP connection of format ``fmt`` (not ``statsd``: the listener's own)."""
    if fmt == "graphite":
        return _LineFramer(limit, stats)
    if fmt == "graphite_pickle":
        return _PickleFramer(stats)
    if fmt == "statsite":
        return _StatsiteFramer(limit, stats)
    raise ValueError(f"no framer for listener format {fmt!r}")


def decode(fmt: str, payload: bytes, stats: SelfStats) -> list[Sample]:
    """The samples of one payload of format ``fmt``; bad pieces counted and dropped."""
    if fmt == "graphite":
        return decode_graphite_payload(payload, stats)
    if fmt == "graphite_pickle":
        return decode_pickle_frame(payload, stats)
    if fmt == "statsite":
        return decode_statsite(payload, stats, final=True)[0]
    raise ValueError(f"listener format {fmt!r} is decoded by the statsd path")


def relay_accepts(relay: object, fmt: str) -> bool:
    """Whether ``relay`` takes the items of a payload of format ``fmt``."""
    wanted = getattr(relay, "INPUT_FORMAT", "statsd")
    return wanted == ("graphite" if fmt == "graphite_pickle" else fmt)


def relay_items(fmt: str, payload: bytes, stats: SelfStats | None = None) -> list[bytes]:
    """What relays get from one payload: graphite lines, or whole statsite commands. A pickle
    frame's refusals are counted into ``stats`` when given; without it :func:`decode` of the
    same payload counts them."""
    if fmt == "graphite":
        return [line for line in payload.split(b"\n") if line.strip()]
    if fmt == "graphite_pickle":
        if stats is not None:
            return [_graphite_line(sample) for sample in decode_pickle_frame(payload, stats)]
        try:
            samples, _ = parse_pickle_frame(payload)
        except ValueError:
            return []  # refused and counted by decode()
        return [_graphite_line(sample) for sample in samples]
    if fmt == "statsite":
        commands, _ = scan_statsite(payload, final=True)
        return [command.raw for command in commands if command.error is None]
    raise ValueError(f"listener format {fmt!r} is relayed by the statsd path")


def _graphite_line(sample: Sample) -> bytes:
    path = sample.name + "".join(f";{key}={value}" for key, value in sample.tags)
    stamp = sample.timestamp if sample.timestamp is not None else 0.0
    stamp_text = str(int(stamp)) if stamp.is_integer() else repr(stamp)
    return f"{path} {sample.value!r} {stamp_text}".encode()
