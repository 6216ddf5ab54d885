"""The receive path after the socket: payload -> (relay forwarders) -> decode -> tag -> aggregate.

Most statsd traffic repeats the same few thousand ``name|type|rate|tags`` shapes with different
values. The fast path keys a bounded cache by a line's bytes minus its value: on a hit only the
value is parsed and the series' cell (see :mod:`pystatsd.aggregation`) is updated inline. Counter
lines with a short increment (``name:1|c``, the commonest line there is) are also remembered
whole, with their increment, so that they cost one dict lookup. Every
line the cache does not know, or that is out of the ordinary (several packed values, a client
timestamp, JSON, a value that is not a plain number), goes through the real decoder
(:func:`pystatsd.decoders.decode_payload` rules), the :class:`~pystatsd.tagging.Tagger` and
:meth:`MetricMgr.add`, which are the only place the semantics live. The fast path only ever
replays what that slow path decided for the same bytes, and the tests check both give the same
snapshots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forwarders import RelayForwarder
from pystatsd.aggregation import Config, MetricMgr
from pystatsd.decoders import DecodeError, decode_payload, parse_statsd_line
from pystatsd.relay_input import RelayInput
from pystatsd.sample import COUNTER, GAUGE, HISTOGRAM, SET, TIMER, Sample
from pystatsd.selfstats import SelfStats
from pystatsd.tagging import Tagger
from pystatsd.wire_formats import decode, relay_accepts, relay_items

CACHE_ENTRIES = 100_000
CACHE_BYTES = 32 << 20
"""Line shapes remembered by the fast path: at most this many, and about this much memory
(counting each shape's bytes plus ~300 of overhead; DogStatsD tags can make a line long). When
full the cache is emptied and refills from the traffic, which is cheap and needs no bookkeeping
per hit."""
COUNTER_LINES = 50_000
COUNTER_LINE_BYTES = 256
"""Whole counter lines remembered: at most this many, each at most this long."""
_ENTRY_OVERHEAD = 300

# Fast-path entry kinds.
_COUNTER, _GAUGE, _DISTRIBUTION, _SET, _OTHER = range(5)

_NUMBER_BYTES = b"0123456789.eE+-"
"""A value made only of these bytes that ``float()`` accepts is exactly what the decoder's
number grammar accepts (``float`` alone would also take ``1_000``, `` 1``, ``nan``, ``inf``)."""

_SLOW_START = b"{[ \t\r\n\x0b\x0c"
"""A payload starting with one of these goes whole to ``decode_payload``: JSON (which it
detects after leading whitespace), or an empty payload."""

_JSON_START = (ord("{"), ord("["))
_PLUS, _MINUS = ord("+"), ord("-")
_NO_ENTRIES: dict[bytes, list[Any]] = {}


class Pipeline:
    """Everything done with one received payload, under the daemon's ingest lock."""

    def __init__(self, config: Config, manager: MetricMgr, stats: SelfStats,
                 relays: Sequence[RelayForwarder] = ()) -> None:
        self._manager = manager
        self._stats = stats
        manager.stats = stats
        manager.set_count_publisher(self.publish_counts)
        self._relays = tuple(r for r in relays if relay_accepts(r, "statsd"))
        self._all_relays = tuple(relays)
        # Counted in plain ints (a Counter update per payload would cost more than a line)
        # and published into ``stats`` just before each swap.
        self._datagrams = 0
        self._lines = 0
        self._hits = 0  # lines the fast path took: each one sample decoded and aggregated
        self._decoded = 0
        self._aggregated = 0
        self._cache: dict[bytes, dict[bytes, list[Any]]] = {}
        self._cache_size = 0
        self._cache_bytes = 0
        self._counter_lines: dict[bytes, tuple[list[Any], float]] = {}
        """Whole counter lines with a short value -> (their shape's entry, the increment): the
        commonest statsd line, ``name:1|c``, then costs one dict lookup."""
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config: agent tags, precedence, limits. Empties the line cache,
        whose entries hold series keys with the old agent tags."""
        self._tagger = Tagger(config["agent"].get("tags", {}), config["tag_precedence"])
        self._relay_only = config["mode"] == "relay"
        self._relaying = self._relay_only or bool(self._relays)
        self._relay_input = RelayInput(self._stats, count_decode_rejects=self._relay_only)
        self._manager.reconfigure(config)
        self._cache = {}
        self._cache_size = 0
        self._cache_bytes = 0
        self._counter_lines = {}

    @property
    def cached_shapes(self) -> int:
        """Line shapes the fast path knows now."""
        return self._cache_size

    def publish_counts(self) -> None:
        """Add the counts kept since the last call to ``stats``."""
        stats = self._stats
        for name, amount in (("received.datagrams", self._datagrams),
                             ("received.lines", self._lines),
                             ("decoded.samples", self._decoded + self._hits),
                             ("aggregated.samples", self._aggregated + self._hits)):
            if amount:
                stats.incr(name, amount)
        self._datagrams = self._lines = self._hits = self._decoded = self._aggregated = 0

    def ingest(self, payload: bytes, fmt: str = "statsd") -> None:
        """Handle one UDP datagram, or a chunk of complete TCP lines joined by ``\\n``; a
        listener of another ``format`` hands whole units of it (pystatsd.wire_formats)."""
        if fmt != "statsd":
            self._ingest_format(payload, fmt)
            return
        self._datagrams += 1
        if self._relaying and self._relay(payload):
            return
        if payload[:1] in _SLOW_START:
            self._ingest_decoded(payload)
            return

        lines = payload.split(b"\n")
        if not lines[-1]:
            lines.pop()
        self._lines += len(lines)
        manager = self._manager
        epoch = manager.epoch
        exact_limit = manager.exact_limit
        entries_for = self._cache.get
        counter_lines = self._counter_lines
        known_counter = counter_lines.get
        hits = 0
        for line in lines:
            known = known_counter(line)
            if known is not None:  # a counter line seen before, bytes for bytes: add, done
                shape = known[0]
                if shape[1] == epoch:
                    shape[2][0] += known[1]
                    hits += 1
                    continue
            name, _, rest = line.partition(b":")
            value, _, tail = rest.partition(b"|")
            entry = entries_for(tail, _NO_ENTRIES).get(name)
            if entry is None:
                self._ingest_line(line)
                continue
            kind, bound_epoch, cell, weight, key = entry
            if kind == _SET:
                if not value:
                    self._ingest_line(line)
                    continue
                try:
                    member = value.decode()
                except UnicodeDecodeError:
                    self._ingest_line(line)
                    continue
            else:
                if value.isdigit():  # the usual integer: nothing more to check
                    if len(value) > 300:  # float() would overflow to inf: let the decoder say so
                        self._ingest_line(line)
                        continue
                    number = float(value)
                else:
                    if value.translate(None, _NUMBER_BYTES):
                        self._ingest_line(line)
                        continue
                    try:
                        number = float(value)
                    except ValueError:
                        self._ingest_line(line)
                        continue
                    if number - number != 0.0:  # inf or nan, from an exponent
                        self._ingest_line(line)
                        continue
            if bound_epoch != epoch:
                cell = manager.cell(key)
                if cell is None:  # too many series: rejected and counted by the manager
                    self._decoded += 1
                    continue
                if kind == _DISTRIBUTION:
                    cell = cell.values
                entry[1] = epoch
                entry[2] = cell
            # These branches are MetricMgr.update, inlined; keep them equal.
            if kind == _COUNTER:
                cell[0] += number * weight
                if len(value) <= 3 and len(line) <= COUNTER_LINE_BYTES:
                    # Small increments repeat (mostly :1): remember the whole line.
                    if len(counter_lines) >= COUNTER_LINES:
                        counter_lines.clear()
                    counter_lines[line] = (entry, number * weight)
            elif kind == _DISTRIBUTION:
                cell.append(number)
                if len(cell) > exact_limit:
                    manager.fold(key)
            elif kind == _GAUGE:
                if value[0] == _PLUS or value[0] == _MINUS:
                    cell[1] += number
                else:
                    cell[0] = number
                    cell[1] = 0.0
            elif kind == _SET:
                cell[member] = None
            else:
                manager.update(key[1], cell, number, weight, False)
            hits += 1
        self._hits += hits

    def _relay(self, payload: bytes) -> bool:
        """Hand the payload's lines to every relay forwarder, split once; True in relay mode,
        where nothing else is done with them."""
        lines = payload.split(b"\n")
        if not lines[-1]:
            lines.pop()
        if lines:
            plain, from_json = self._relay_input.split(lines)
            for relay in self._relays:
                if plain:
                    relay.submit_lines(plain)
                if from_json:
                    relay.submit_lines(from_json, from_json=True)
        if self._relay_only:
            self._lines += len(lines)
        return self._relay_only

    def _ingest_format(self, payload: bytes, fmt: str) -> None:
        """A payload of graphite or statsite: to the relays that take that input, and (unless
        relay mode) decoded and aggregated."""
        self._datagrams += 1
        relays = [relay for relay in self._all_relays if relay_accepts(relay, fmt)]
        if relays:
            items = relay_items(fmt, payload)
            if items:
                for relay in relays:
                    relay.submit_lines(items)
        if self._relay_only:
            return
        samples = decode(fmt, payload, self._stats)
        self._lines += len(samples)
        self._aggregate(samples)

    # -- the slow path: the decoders' rules, then the tagger and MetricMgr.add ----------------
    def _ingest_decoded(self, payload: bytes) -> None:
        """A whole payload through ``decode_payload`` (JSON, or anything starting oddly)."""
        self._lines += sum(1 for line in payload.split(b"\n") if line.strip())
        self._aggregate(decode_payload(payload, self._stats))

    def _ingest_line(self, line: bytes) -> None:
        """One line the fast path could not take: decode it as ``decode_payload`` would, and
        remember its shape when the next line like it can take the fast path."""
        stripped = line.strip()
        if not stripped:
            self._lines -= 1
            return
        if stripped[0] in _JSON_START:
            self._aggregate(decode_payload(stripped, self._stats))
            return
        try:
            samples = parse_statsd_line(stripped)
        except DecodeError as exc:
            self._stats.reject(exc.reason, exc.detail, stripped)
            return
        except Exception:  # a decoder bug: let decode_payload count and log it the usual way
            self._aggregate(decode_payload(stripped, self._stats))
            return
        tagged = self._aggregate(samples)
        if len(tagged) == 1 and tagged[0].timestamp is None:
            self._remember(line, tagged[0])

    def _aggregate(self, samples: list[Sample]) -> list[Sample]:
        apply = self._tagger.apply
        add = self._manager.add
        tagged = [sample._replace(tags=apply(sample.tags)) for sample in samples]
        aggregated = 0
        for sample in tagged:
            if add(sample):
                aggregated += 1
        self._decoded += len(samples)
        self._aggregated += aggregated
        return tagged

    def _remember(self, line: bytes, sample: Sample) -> None:
        """Cache the shape of ``line`` (its bytes minus the value) with what the decoder made of
        it. Sound because the decoder is a pure function of the line: another line with the same
        name and tail bytes decodes the same but for the value, which the fast path parses and
        checks with the decoder's own grammar."""
        name, _, rest = line.partition(b":")
        _, _, tail = rest.partition(b"|")
        kind = sample.type
        weight = 1.0 / sample.rate
        if kind == COUNTER:
            code = _COUNTER
        elif kind == GAUGE:
            code = _GAUGE
        elif kind == SET:
            code = _SET
        elif (kind == TIMER or kind == HISTOGRAM) and weight == 1.0:
            code = _DISTRIBUTION
        else:
            code = _OTHER
        if self._cache_size >= CACHE_ENTRIES or self._cache_bytes >= CACHE_BYTES:
            self._cache = {}
            self._cache_size = 0
            self._cache_bytes = 0
            self._counter_lines = {}
        by_name = self._cache.setdefault(tail, {})
        if name not in by_name:
            self._cache_size += 1
            self._cache_bytes += len(name) + len(tail) + _ENTRY_OVERHEAD
        by_name[name] = [code, -1, None, weight, (sample.name, kind, sample.tags)]
