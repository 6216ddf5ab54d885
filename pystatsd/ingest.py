"""The receive path after the socket: payload -> (relay forwarders) -> decode -> tag -> aggregate.

The pipeline splits a payload into lines and hands them to the aggregation side's
:class:`~pystatsd.aggregation.LineCache`, which applies every line whose shape it knows to its
series' cell. Every line the cache does not take, and every payload out of the ordinary (JSON,
one starting with whitespace), goes through the real decoder
(:func:`pystatsd.decoders.decode_payload` rules), the :class:`~pystatsd.tagging.Tagger` and
:meth:`MetricMgr.add`, which are the only place the decoding, tagging and aggregation rules live;
a line that decoded to one plain sample is then remembered by the cache, which from then on
only replays what that slow path decided for the same bytes. The tests check both paths give
the same statistics and the same cells.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from forwarders import RelayForwarder
from pystatsd.aggregation import Config, LineCache, MetricMgr
from pystatsd.decoders import DecodeError, decode_payload, parse_statsd_line
from pystatsd.decoders.events import is_event_line, parse_event_line
from pystatsd.graphite_ingest import (
    GraphiteRules,
    GraphiteSource,
    graphite_config_errors,
    load_graphite_rules,
)
from pystatsd.mapping import load_mapper
from pystatsd.relay_input import RelayInput
from pystatsd.sample import Sample
from pystatsd.selfstats import SelfStats
from pystatsd.snapshot import Event
from pystatsd.tagging import Tagger
from pystatsd.wire_formats import decode, relay_accepts, relay_items

log = logging.getLogger("pystatsd.ingest")

_SLOW_START = b"{[ \t\r\n\x0b\x0c"
"""A payload starting with one of these goes whole to ``decode_payload``: JSON (which it
detects after leading whitespace), or an empty payload."""

_JSON_START = (ord("{"), ord("["))


class Pipeline:
    """Everything done with one received payload, under the daemon's ingest lock."""

    def __init__(self, config: Config, manager: MetricMgr, stats: SelfStats,
                 relays: Sequence[RelayForwarder] = ()) -> None:
        self._manager = manager
        self._stats = stats
        manager.stats = stats
        self._relays = tuple(r for r in relays if relay_accepts(r, "statsd"))
        self._all_relays = tuple(relays)
        self._graphite_relays = tuple(r for r in relays if relay_accepts(r, "graphite"))
        # Counted in plain ints (a Counter update per payload would cost more than a line)
        # and published into ``stats`` by publish_counts, which the daemon calls before each
        # swap.
        self._datagrams = 0
        self._lines = 0
        self._decoded = 0
        self._aggregated = 0
        self._graphite_counts: dict[str, int] = {}
        """Per graphite listener: ``<prefix>.datapoints.relayed`` and the rest, published
        with the other counts."""
        self._cache = LineCache(manager)
        self._absolute_cache = LineCache(manager, absolute_gauges=True)
        """For the lines of ``gauge_sign: absolute`` listeners: the same shape means another
        gauge rule there, so each meaning has its own cache."""
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config: agent tags, precedence, limits. Empties the line cache,
        whose entries hold series keys with the old agent tags."""
        self._tagger = Tagger(config["agent"].get("tags", {}), config["tag_precedence"])
        self._container_tag: str = config["container_id_tag"]
        self._mapper = load_mapper(config)  # validated with the config: raises only on a race
        self._relay_only = config["mode"] == "relay"
        self._relaying = self._relay_only or bool(self._relays)
        self._relay_input = RelayInput(self._stats, count_decode_rejects=self._relay_only)
        self._graphite_rules: dict[str, GraphiteRules] = load_graphite_rules(config)
        # A reload keeps the running listeners (they change on restart), checked above only
        # against the new file's: say when the new rule lists do not fit the running ones.
        for line in graphite_config_errors(config, config.get("listeners") or []):
            log.warning("the running listeners do not fit the reloaded graphite_rules: %s; "
                        "their datapoints are aggregated as gauges until a restart", line)
        self._manager.reconfigure(config)
        self._cache.clear()
        self._absolute_cache.clear()

    @property
    def cached_shapes(self) -> int:
        """Line shapes the fast path knows now."""
        return len(self._cache) + len(self._absolute_cache)

    def publish_counts(self) -> None:
        """Add the counts kept since the last call to ``stats``. The daemon calls it under the
        ingest lock just before ``MetricMgr.swap`` (so the counts land in the interval they
        belong to), and on the old pipeline before a reload replaces it."""
        hits = self._cache.hits + self._absolute_cache.hits
        unplaced = self._cache.unplaced + self._absolute_cache.unplaced
        batched_lines = self._cache.lines + self._absolute_cache.lines
        stats = self._stats
        for name, amount in (("received.datagrams", self._datagrams),
                             ("received.lines", self._lines + batched_lines),
                             ("decoded.samples", self._decoded + hits + unplaced),
                             ("aggregated.samples", self._aggregated + hits)):
            if amount:
                stats.incr(name, amount)
        self._datagrams = self._lines = self._decoded = self._aggregated = 0
        for name, amount in self._graphite_counts.items():
            if amount:
                stats.incr(name, amount)
        self._graphite_counts = {}
        for cache in (self._cache, self._absolute_cache):
            cache.hits = cache.unplaced = cache.lines = 0

    def ingest(self, payload: bytes, fmt: str = "statsd", absolute_gauges: bool = False,
               graphite: GraphiteSource | None = None) -> None:
        """Handle one UDP datagram, or a chunk of complete TCP lines joined by ``\\n``; a
        listener of another ``format`` hands whole units of it (pystatsd.wire_formats).
        ``absolute_gauges`` is the listener's ``gauge_sign: absolute``; ``graphite`` what a
        graphite listener does with its datapoints (pystatsd.graphite_ingest)."""
        if fmt != "statsd":  # first: the statsd path pays one comparison, as before
            if graphite is not None:
                self._ingest_graphite(payload, fmt, graphite)
            else:
                self._ingest_format(payload, fmt)
            return
        self._datagrams += 1
        if self._relaying and self._relay(payload):
            return
        # An int in bytes, not payload[:1] in bytes: that tries the slice as an int first and
        # raises and clears a TypeError each payload (measured: ~600 instructions).
        if not payload or payload[0] in _SLOW_START:
            self._ingest_decoded(payload, absolute_gauges)
            return
        cache = self._absolute_cache if absolute_gauges else self._cache
        taken, missed = cache.apply_payload(payload)  # no line split unless one is not taken
        if missed is None:
            self._lines += taken
            return
        self._ingest_missed(payload, missed, cache)

    def ingest_batch(self, payloads: list[bytes], failed: Callable[[bytes], object],
                     absolute_gauges: bool = False) -> None:
        """``ingest(payload, "statsd", absolute_gauges)`` for each of ``payloads`` in order,
        calling ``failed(payload)`` inside the ``except`` for one that raised, then going on:
        the native receive's batch of datagrams in one call. The line cache takes the run of
        payloads it takes whole in one call of its own (``apply_payloads``: no Python frame
        per datagram); each payload it stops at goes the way ``ingest`` sends it, and the
        cache resumes after it. The counts are ``ingest``'s, datagram for datagram."""
        if self._relaying:  # the relays see every payload: ingest's own way
            for payload in payloads:
                try:
                    self.ingest(payload, "statsd", absolute_gauges)
                except Exception:
                    failed(payload)
            return
        self._datagrams += len(payloads)
        cache = self._absolute_cache if absolute_gauges else self._cache
        index, count = 0, len(payloads)
        while index < count:
            try:
                index, taken, missed = cache.apply_payloads(payloads, index, _SLOW_START)
            except Exception:
                index = cache.position
                failed(payloads[index])
                index += 1
                continue
            if index == count:
                return
            payload = payloads[index]
            try:
                if missed is None:  # empty, JSON or an odd start
                    self._ingest_decoded(payload, absolute_gauges)
                else:
                    self._ingest_missed(payload, missed, cache)
            except Exception:
                failed(payload)
            index += 1

    def _ingest_missed(self, payload: bytes, missed: bytes, cache: LineCache) -> None:
        """The rest of a payload whose line ``missed`` the cache did not take (the lines
        before it it took): that line through the slow path, then the lines after it."""
        lines = payload.split(b"\n")
        if not lines[-1]:
            lines.pop()
        self._lines += len(lines)
        self._ingest_from(lines, missed, cache)

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

    def _ingest_graphite(self, payload: bytes, fmt: str, source: GraphiteSource) -> None:
        """A payload of a graphite listener: relayed raw, aggregated by its rules, or both,
        as the listener's ``graphite_datapoints`` (or else the mode) says."""
        self._datagrams += 1
        uses = source.uses if source.uses is not None else (
            ("relay",) if self._relay_only else ("relay", "aggregate"))
        aggregate = "aggregate" in uses and not self._relay_only
        counts = self._graphite_counts
        if "relay" in uses:
            # Without aggregation nobody else decodes the payload: a refused pickle is counted
            # here then.
            items = relay_items(fmt, payload, None if aggregate else self._stats)
            if items and self._graphite_relays:
                for relay in self._graphite_relays:
                    relay.submit_lines(items)
                name = source.prefix + ".datapoints.relayed"
                counts[name] = counts.get(name, 0) + len(items)
            if not aggregate:
                self._lines += len(items)
        if not aggregate:
            return
        samples = decode(fmt, payload, self._stats)
        self._lines += len(samples)
        rules = self._graphite_rules.get(source.rules) if source.rules is not None else None
        if rules is not None:
            decided = [rules.apply(sample) for sample in samples]
            kept = [sample for sample in decided if sample is not None]
            if len(kept) < len(samples):
                name = source.prefix + ".datapoints.refused_by_rule"
                counts[name] = counts.get(name, 0) + len(samples) - len(kept)
            samples = kept
        before = self._aggregated
        self._aggregate(samples)
        if self._aggregated > before:
            name = source.prefix + ".datapoints.aggregated"
            counts[name] = counts.get(name, 0) + self._aggregated - before

    # -- the slow path: the decoders' rules, then the tagger and MetricMgr.add ----------------
    def _ingest_from(self, lines: list[bytes], missed: bytes, cache: LineCache) -> None:
        """Take ``missed``, the first of ``lines`` the cache did not take, through the slow
        path, then the lines after it, in order. The first line equal to ``missed`` is the one
        it stopped at: during one ``apply`` whether the cache takes a line depends on the
        line's bytes alone."""
        rest = iter(lines[lines.index(missed) + 1:])
        line: bytes | None = missed
        while line is not None:
            self._ingest_line(line, cache)
            line = cache.apply(rest)

    def _ingest_decoded(self, payload: bytes, absolute_gauges: bool) -> None:
        """A whole payload through ``decode_payload`` (JSON, or anything starting oddly)."""
        self._lines += sum(1 for line in payload.split(b"\n") if line.strip())
        events: list[Event] = []
        self._aggregate(decode_payload(payload, self._stats, absolute_gauges,
                                       self._container_tag, events))
        self._keep_events(events)

    def _ingest_line(self, line: bytes, cache: LineCache) -> None:
        """One line the line cache did not take: decode it as ``decode_payload`` would, and
        have the cache remember its shape when the next line like it can take the fast path."""
        stripped = line.strip()
        if not stripped:
            self._lines -= 1
            return
        absolute, container_tag = cache.absolute_gauges, self._container_tag
        if is_event_line(stripped):
            try:
                event = parse_event_line(stripped)
            except DecodeError as exc:
                self._stats.reject(exc.reason, exc.detail, stripped)
                return
            self._keep_events([event])
            return
        if stripped[0] in _JSON_START:
            self._aggregate(decode_payload(stripped, self._stats, absolute, container_tag))
            return
        try:
            samples = parse_statsd_line(stripped, absolute, container_tag)
        except DecodeError as exc:
            self._stats.reject(exc.reason, exc.detail, stripped)
            return
        except Exception:  # a decoder bug: let decode_payload count and log it the usual way
            self._aggregate(decode_payload(stripped, self._stats, absolute, container_tag))
            return
        tagged = self._aggregate(samples)
        if len(tagged) == 1 and tagged[0].timestamp is None:
            cache.remember(line, tagged[0])

    def _keep_events(self, events: list[Event]) -> None:
        apply = self._tagger.apply
        for event in events:
            self._manager.add_event(dataclasses.replace(event, tags=apply(event.tags)))
        self._decoded += len(events)

    def _aggregate(self, samples: list[Sample]) -> list[Sample]:
        apply = self._tagger.apply
        add = self._manager.add
        decoded = len(samples)
        if self._mapper:
            mapped = [self._mapper.apply(sample) for sample in samples]
            samples = [sample for sample in mapped if sample is not None]
            if len(samples) < decoded:
                self._stats.incr("mapping.dropped", decoded - len(samples))
        tagged = [sample._replace(tags=apply(sample.tags)) for sample in samples]
        aggregated = 0
        for sample in tagged:
            if add(sample):
                aggregated += 1
        self._decoded += decoded
        self._aggregated += aggregated
        return tagged
