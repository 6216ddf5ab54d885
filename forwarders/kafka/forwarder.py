"""The Kafka forwarder: one message per series per flush, keyed by the series identity.

Delivery, in order of preference (docs/kafka.md has the whole story):

1. ``send`` encodes a flush and hands each message to one long-lived confluent-kafka producer
   (idempotent, ``acks=all``), whose own queue is the bounded in-memory queue
   (``memory_queue_messages``/``memory_queue_bytes``). It never waits on the broker.
2. When that queue is full, or while the disk spool still holds older messages, messages go to
   the spool (``spool_dir``, at most ``spool_max_bytes``). A pump thread serves the producer's
   delivery reports and feeds the spool back to the producer, oldest first, a window at a time.
3. A message whose delivery fails for a reason that can pass (timed out, broker unreachable)
   goes back to the front of the spool (``retried``); one that can never succeed (too large,
   not authorised) is dropped and counted (``failed``), with a rate-limited log line.
4. At shutdown, what is still in the producer after the deadline is purged and written to the
   front of the spool; the next start sends it first.

Only a full spool drops messages, and it counts them (``spool_dropped``); a spool the disk
refuses loses what it cannot write, and counts that (``spool_io_errors``, ``spool_io_lost``).
Nothing handed on from the spool is sent from it again (see :mod:`forwarders.spool`), and
every message carries the header ``pystatsd-id`` (:func:`message_id`), the same on every
delivery of it, so a consumer can drop a duplicate whatever caused it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from forwarders.aggregate import AggregateForwarder
from forwarders.base import ForwarderContext, NeededPath
from forwarders.kafka.embedded_broker import (
    EmbeddedBroker,
    EmbeddedBrokerUnavailable,
    broker_binary,
)
from forwarders.kafka.formats import FORMATS, Unencodable, make_encoder
from forwarders.kafka.outage import OutageWatch
from forwarders.records import event_record
from forwarders.spool import Record, Spool, SpoolInUse
from pystatsd.snapshot import SeriesStats, Snapshot

__all__ = ["ID_HEADER", "KafkaConfigError", "KafkaForwarder", "message_id"]

ID_HEADER = "pystatsd-id"
"""The header that carries each message's idempotence id."""

_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
# Delivery errors that say nothing about the message itself: sending it again later can work.
_TRANSIENT = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._FATAL,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.NETWORK_EXCEPTION,
})
# The broker no longer accepts this producer's id/epoch/sequence (seen with Tansu after
# librdkafka bumps the epoch of an idempotent producer whose messages timed out): resend the
# messages with a new producer rather than lose them.
_PRODUCER_STATE_LOST = frozenset({
    KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.PRODUCER_FENCED,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID,
    KafkaError.INVALID_PRODUCER_ID_MAPPING,
})
ReadyMessage = tuple[str, bytes | None, bytes, bytes]
"""One message as :meth:`KafkaForwarder.prepare` makes it: topic, key, value, id (the fields of
:class:`~forwarders.spool.Record`, which is one too)."""
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PROBLEM_LOG_INTERVAL = 60.0


def message_id(series: SeriesStats, snapshot: Snapshot) -> bytes:
    """The idempotence id of a series' message in a flush: 32 hex digits of the BLAKE2b-128
    of host, type, name, tags, interval start and interval length. Length too, because a daemon
    restarted within an interval flushes that interval's start twice: the stop's final flush
    (cut short) and the next start's first one, with different data."""
    identity = orjson.dumps((snapshot.host, series.type, series.name, series.tags,
                             snapshot.start, snapshot.interval))
    return hashlib.blake2b(identity, digest_size=16).hexdigest().encode()


def _printable(text: str) -> str:
    """``text`` as is when every character prints, else with Python's escapes: a tag value's
    newline must not start a line of its own in the log."""
    return text if text.isprintable() else repr(text)[1:-1]


class KafkaConfigError(ValueError):
    """A Kafka section cannot be used; the message starts with the key's path."""


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, default: int, minimum: int = 0) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "default": default,
            "description": description}


CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kafka_topic"],
    "properties": {
        "kafka_broker": _string(
            "Bootstrap servers, `host:port[,host:port...]`. When absent, an embedded "
            "memory-only Tansu broker is started on `embedded_broker_listen` (needs the "
            "`embedded-broker` extra) and one log line says where."),
        "kafka_topic": _string(
            "Topic, fixed or a template: `{type}` is the metric type, `{tag:KEY}` the value of "
            "tag KEY (`topic_missing_tag` when the series has no such tag). Characters Kafka "
            "does not allow in a topic name become `_`.", minLength=1),
        "topic_missing_tag": _string("Stands in for `{tag:KEY}` when a series lacks the tag.",
                                     default="untagged", minLength=1),
        "events_topic": _string(
            "Topic of the DogStatsD events and service checks: one JSON message each "
            "(docs/schemas/kafka-event.schema.json), whatever `format` says; key "
            "`<kind>:<title>`.", default="pystatsd-events", minLength=1),
        "kafka_apikey": _string("`apikey` field of each legacy event.", default=""),
        "kafka_tenant_id": _string("`tenant_id` field of each legacy event.", default=""),
        "format": {
            "enum": list(FORMATS), "default": "legacy",
            "description": "Message format: `legacy` (the old daemon's event, so its consumers "
            "keep working), `json` (structured record with every statistic), `influx` "
            "(InfluxDB line protocol, one series per message) or `partials` (mergeable state "
            "for the global tier, docs/scaling.md). Schemas: docs/schemas/.",
        },
        "compression": {
            "enum": ["none", "gzip", "snappy", "lz4", "zstd"], "default": "lz4",
            "description": "Batch compression (librdkafka `compression.type`).",
        },
        "linger_ms": _integer("How long the producer waits to fill a batch "
                              "(librdkafka `linger.ms`).", 20),
        "batch_bytes": _integer("Largest batch per partition (librdkafka `batch.size`).",
                                1_000_000, 1),
        "delivery_timeout": {
            "type": "number", "exclusiveMinimum": 0, "default": 300,
            "description": "Seconds a message may wait for acknowledgement (librdkafka "
            "`message.timeout.ms`); past it the message goes back to the spool (`retried`).",
        },
        "memory_queue_messages": _integer(
            "Messages the producer holds in memory (waiting or in flight) before new ones "
            "spill to the spool.", 200_000, 1),
        "memory_queue_bytes": _integer(
            "Bytes the producer holds in memory before new messages spill to the spool.",
            128 << 20, 1024),
        "spool_dir": _string("Directory of the disk spool; default "
                             "`<state_dir>/spool/<forwarder name>`."),
        "spool_max_bytes": _integer("Size bound of the spool; past it new messages are dropped "
                                    "and counted (`spool_dropped`).", 256 << 20, 0),
        "security_protocol": {
            "enum": ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"], "default": "plaintext",
            "description": "librdkafka `security.protocol`.",
        },
        "sasl_mechanism": {
            "enum": ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            "description": "SASL mechanism, with `sasl_username`/`sasl_password`.",
        },
        "sasl_username": _string("SASL user name."),
        "sasl_password": _string("SASL password."),
        "ssl_ca_location": _string("CA certificate file (PEM) to verify the brokers."),
        "ssl_certificate_location": _string("Client certificate file (PEM), for mutual TLS."),
        "ssl_key_location": _string("Client private key file (PEM)."),
        "ssl_key_password": _string("Password of the client private key."),
        "producer": {
            "type": "object", "default": {},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "description": "Any librdkafka producer setting, passed through as given; applied "
            "last, so it overrides the keys above (e.g. `enable.idempotence: false`).",
        },
        "embedded_broker_listen": _string(
            "Where the embedded broker listens when `kafka_broker` is absent.",
            default="127.0.0.1:9092", pattern=r"^[^:]*:[0-9]{1,5}$"),
    },
}


class _ProblemLog:
    """One log line per kind of problem per interval, saying how many were not logged."""

    def __init__(self, log: logging.Logger, interval: float = _PROBLEM_LOG_INTERVAL) -> None:
        self._log = log
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def report(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._suppressed.pop(kind, 0)
        more = f" ({skipped} more like it since the last report)" if skipped else ""
        self._log.error("%s%s", message, more)


class _LibrdkafkaLog:
    """librdkafka's own log, one line per connection attempt while a broker is down, goes to
    DEBUG; the forwarder reports problems itself, once, through :class:`_ProblemLog`."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def log(self, level: int, message: str, *args: Any) -> None:
        self._log.debug(message, *args)


def _topic_router(template: str, missing: str, where: str) -> Callable[[SeriesStats], str]:
    pieces = _PLACEHOLDER.split(template)  # literal, placeholder, literal, ...
    if len(pieces) == 1:
        fixed = _TOPIC_UNSAFE.sub("_", template)
        return lambda series: fixed
    for placeholder in pieces[1::2]:
        if placeholder != "type" and not placeholder.startswith("tag:"):
            raise KafkaConfigError(f"{where}.kafka_topic: unknown placeholder {{{placeholder}}} "
                                   "(known: {type}, {tag:KEY})")

    def route(series: SeriesStats) -> str:
        tags = dict(series.tags)
        out = []
        for index, piece in enumerate(pieces):
            if index % 2 == 0:
                out.append(piece)
            elif piece == "type":
                out.append(series.type)
            else:
                out.append(tags.get(piece[4:]) or missing)
        return _TOPIC_UNSAFE.sub("_", "".join(out))[:249]

    return route


class KafkaForwarder(AggregateForwarder):
    """Each flush to Kafka, one message per series, keyed by series; see the module docstring."""

    CONFIG_SCHEMA: ClassVar[dict[str, Any]] = CONFIG_SCHEMA
    TOTALS: ClassVar[tuple[str, ...]] = (*AggregateForwarder.TOTALS, "produced", "delivered",
                                         "failed", "retried", "spooled", "spool_sent",
                                         "spool_dropped", "spool_io_errors", "spool_io_lost",
                                         "broker_errors", "unencodable", "pump_errors",
                                         "outages")
    """``sent`` (the base's) counts series made into messages and handed on, to the producer
    or the spool: not delivered. ``produced``: messages handed to the producer (new or from
    the spool); ``delivered``: acknowledged by the broker."""
    LEVELS: ClassVar[tuple[str, ...]] = (*AggregateForwarder.LEVELS, "in_flight",
                                         "spooled_now", "spool_bytes")
    """``in_flight``: messages in the producer, not acknowledged yet; ``spooled_now``:
    messages in the spool, waiting to be produced."""

    def __init__(self, name: str, config: Mapping[str, Any], context: ForwarderContext) -> None:
        super().__init__(name, config, context)
        config = self.config  # with the schema's defaults
        where = f"forwarders.{name}"
        self.counters.update({
            "produced": 0, "delivered": 0, "failed": 0, "retried": 0, "spooled": 0,
            "spool_sent": 0, "spool_dropped": 0, "broker_errors": 0, "unencodable": 0,
            "pump_errors": 0,
        })
        self._encode = make_encoder(config["format"], config["kafka_apikey"],
                                    config["kafka_tenant_id"])
        self._topic_for = _topic_router(config["kafka_topic"], config["topic_missing_tag"],
                                        where)
        self._spool_dir = self.needed_paths(name, config, context)["spool_dir"].path
        self._spool_max_bytes = int(config["spool_max_bytes"])
        self._embedded: EmbeddedBroker | None = None
        if not config.get("kafka_broker") and not context.debug_mode:
            try:
                broker_binary()
            except EmbeddedBrokerUnavailable as exc:
                raise KafkaConfigError(f"{where}.kafka_broker: not set, and {exc}") from exc
        self._producer_settings = self._settings(config)
        self._drain_window = max(1, min(10_000, int(config["memory_queue_messages"]) // 2))
        self._problems = _ProblemLog(self.log)
        self._outage = OutageWatch(name, self.log)
        self._lock = threading.RLock()  # one producer of messages at a time keeps them in order
        self._stopping = threading.Event()
        self._producer: Producer | None = None
        self._spool: Spool | None = None
        self._spool_io_errors = self._spool_io_lost = 0  # of spools already closed
        self._pump: threading.Thread | None = None
        self._requeue: list[Record] = []  # filled by delivery reports, moved to the spool front
        # the id of each message in the producer, by value (each names its series and
        # interval): see _produce
        self._ids_in_flight: dict[bytes, bytes] = {}
        self._fatal = False
        self._bootstrap = ""

    @classmethod
    def needed_paths(cls, name: str, section: Mapping[str, Any],
                     context: ForwarderContext) -> dict[str, NeededPath]:
        directory = Path(section.get("spool_dir") or context.state_dir / "spool" / name)
        return {"spool_dir": NeededPath(directory, directory=True)}

    def _settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": config["compression"],
            "linger.ms": config["linger_ms"],
            "batch.size": config["batch_bytes"],
            "message.timeout.ms": int(float(config["delivery_timeout"]) * 1000),
            "queue.buffering.max.messages": config["memory_queue_messages"],
            "queue.buffering.max.kbytes": max(1, int(config["memory_queue_bytes"]) // 1024),
            # The Java client's partitioner (librdkafka's default hashes keys with CRC32), so
            # a series lands on the partition any other Kafka producer would pick for its key.
            "partitioner": "murmur2_random",
            # A metrics pipeline wants the broker back within seconds of it returning.
            "reconnect.backoff.max.ms": 2000,
            "security.protocol": config["security_protocol"],
            "client.id": f"pystatsd-{self.name}",
        }
        optional = {
            "sasl_mechanism": "sasl.mechanism", "sasl_username": "sasl.username",
            "sasl_password": "sasl.password", "ssl_ca_location": "ssl.ca.location",
            "ssl_certificate_location": "ssl.certificate.location",
            "ssl_key_location": "ssl.key.location", "ssl_key_password": "ssl.key.password",
        }
        for key, setting in optional.items():
            if config.get(key) is not None:
                settings[setting] = config[key]
        settings.update(config["producer"])
        return settings

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self._spool = Spool(self._spool_dir, self._spool_max_bytes, log=self.log)
        except SpoolInUse as exc:
            raise KafkaConfigError(f"forwarders.{self.name}.spool_dir: {exc}") from exc
        except OSError as exc:
            raise KafkaConfigError(f"forwarders.{self.name}.spool_dir: cannot use "
                                   f"{self._spool_dir}: {exc.strerror or exc} (set spool_dir "
                                   "or state_dir to a writable directory)") from exc
        try:
            self._bootstrap = self.config.get("kafka_broker") or self._start_embedded_broker()
            self._producer = self._new_producer(self._bootstrap)
        except Exception:
            self._release()
            raise
        if self._spool:
            self.log.info("forwarder %s: %d bytes spooled in %s from before; sending them first",
                          self.name, self._spool.bytes, self._spool_dir)
        self._pump = threading.Thread(target=self._pump_loop, name=f"kafka-pump-{self.name}",
                                      daemon=True)
        self._pump.start()

    def _start_embedded_broker(self) -> str:
        host, _, port = str(self.config["embedded_broker_listen"]).rpartition(":")
        where = f"forwarders.{self.name}.embedded_broker_listen"
        self._embedded = EmbeddedBroker(host or "127.0.0.1", int(port))
        try:
            bootstrap = self._embedded.start()
        except EmbeddedBrokerUnavailable as exc:
            self._embedded = None
            raise KafkaConfigError(f"{where}: {exc}") from exc
        self.log.warning("forwarder %s: no kafka_broker configured; started an embedded "
                         "memory-only Tansu broker (pid %d) listening on %s", self.name,
                         self._embedded.pid, bootstrap)
        return bootstrap

    def _release(self) -> None:
        """Close the spool and stop the embedded broker (after a failed open, or at the end)."""
        if self._spool is not None:
            with self._lock:
                self._spool.close()
                self._spool_io_errors += self._spool.io_errors
                self._spool_io_lost += self._spool.io_lost
            self._spool = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def _new_producer(self, bootstrap: str) -> Producer:
        settings = {**self._producer_settings, "bootstrap.servers": bootstrap,
                    "on_delivery": self._on_delivery, "error_cb": self._on_error,
                    "logger": _LibrdkafkaLog(self.log)}
        try:
            return Producer(settings)
        except KafkaException as exc:
            raise KafkaConfigError(f"forwarders.{self.name}.producer: {exc.args[0].str()}") \
                from exc

    def shutdown(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._pump is not None:
            self._pump.join(min(1.0, timeout))
        unreported = 0
        spooled_before = self.counters["spooled"]
        if self._producer is not None:
            reserve = min(1.0, timeout / 4)  # time kept to purge and spool what is left
            self._drain_spool_while_delivering(deadline - reserve)
            left = self._producer.flush(max(0.0, deadline - time.monotonic() - reserve))
            if left:
                self._producer.purge(in_queue=True, in_flight=True)
                until = time.monotonic() + max(0.2, reserve)
                while len(self._producer) and time.monotonic() < until:
                    self._producer.poll(0.05)
                # no report even for the purge: cannot be spooled
                unreported = len(self._producer)
        with self._lock:
            if self._spool is not None:
                self._move_requeued_to_spool()
        spooled = self.counters["spooled"] - spooled_before
        if spooled:
            self.log.warning("forwarder %s: %d messages undelivered at shutdown were spooled to "
                             "%s; the next start sends them", self.name, spooled,
                             self._spool_dir)
        self._release()
        # What this instance lost for want of storage, at shutdown or before, is undelivered:
        # the daemon's last line must not say everything was delivered.
        full, io_lost = self.counters["spool_dropped"], self.stats()["spool_io_lost"]
        lost = unreported + full + int(io_lost)
        if lost:
            self.log.warning("forwarder %s: %d messages not delivered: %d did not fit in the "
                             "spool, %d could not be written to it (see the spool errors "
                             "above), %d were still in the producer", self.name, lost, full,
                             io_lost, unreported)
        return lost

    def _drain_spool_while_delivering(self, until: float) -> None:
        """At shutdown, keep sending the spool while the broker acknowledges (what is left
        stays spooled for the next start); stop after a second without progress."""
        assert self._producer is not None and self._spool is not None
        last_progress, delivered = time.monotonic(), self.counters["delivered"]
        while time.monotonic() < until and time.monotonic() - last_progress < 1.0:
            with self._lock:
                self._move_requeued_to_spool()
                if not self._spool:
                    return
                self._drain_spool()
            self._producer.poll(0.05)
            if self.counters["delivered"] != delivered:
                last_progress, delivered = time.monotonic(), self.counters["delivered"]

    # -- the flush path -------------------------------------------------------------------
    @classmethod
    def prepare(cls, section: Mapping[str, Any], snapshot: Snapshot) -> list[Any]:
        """The flush's series as ready messages, made from the snapshot and the section alone
        (in the forked snapshot child when there is one): ``[series covered, problems,
        (topic, key, value, message id)...]``, problems being ``(counter, kind, log line)``
        for the series that could not be encoded (counted and logged by :meth:`send_prepared`,
        in the daemon)."""
        encode = make_encoder(section["format"], section["kafka_apikey"],
                              section["kafka_tenant_id"])
        topic_for = _topic_router(section["kafka_topic"], section["topic_missing_tag"], "")
        prepared: list[Any] = [len(snapshot.series), []]
        problems: list[tuple[str, str, str]] = prepared[1]
        for series in snapshot.series:
            try:
                value = encode(series, snapshot)
            except Unencodable as exc:  # client bytes that would be syntax in this format
                problems.append(("unencodable", "unencodable", f"series not sent as "
                                 f"{section['format']}: {exc}"))
                continue
            except Exception as exc:  # one odd series must not cost the rest of the flush
                problems.append(("failed", "encode", f"cannot encode series {series.key!r}: "
                                 f"{exc}"))
                continue
            if value is not None:
                prepared.append((topic_for(series), series.key.encode(), value,
                                 message_id(series, snapshot)))
        return prepared

    def send(self, snapshot: Snapshot) -> None:
        self.send_prepared(snapshot, self.prepare(self.config, snapshot))

    def send_prepared(self, snapshot: Snapshot, prepared: list[Any]) -> None:
        self._hand_over(self._records(snapshot, prepared))

    def _records(self, snapshot: Snapshot,
                 prepared: list[Any] | None = None) -> list[ReadyMessage]:
        """Every message of the flush, in order: the prepared ones (made now when not given),
        then those of the series the preparation did not see (the daemon's self-metrics),
        then the events. Plain tuples, made a :class:`Record` only if they go to the spool
        (a named tuple each would cost the flush ~1,000 instructions a message)."""
        if prepared is None:
            prepared = self.prepare(self.config, snapshot)
        covered, problems = prepared[0], prepared[1]
        records: list[ReadyMessage] = prepared[2:]
        if covered < snapshot.series_count:
            rest = self.prepare(self.config, Snapshot(snapshot.start, snapshot.interval,
                                                      snapshot.host,
                                                      snapshot.series_from(covered)))
            problems = problems + rest[1]
            records.extend(rest[2:])
        for counter, kind, line in problems:
            self.counters[counter] += 1
            self._problems.report(kind, f"forwarder {self.name}: {line}")
        for event in snapshot.events:
            try:
                value = orjson.dumps(event_record(event, snapshot))
            except orjson.JSONEncodeError as exc:  # a lone surrogate in client text
                self.counters["unencodable"] += 1
                self._problems.report("unencodable", f"forwarder {self.name}: event not "
                                      f"sent: {exc}")
                continue
            records.append(Record(self.config["events_topic"],
                                  f"{event.kind}:{event.title}".encode(errors="replace"),
                                  value, hashlib.blake2b(value, digest_size=16)
                                  .hexdigest().encode()))
        return records

    def _hand_over(self, records: list[ReadyMessage]) -> None:
        with self._lock:
            assert self._spool is not None
            if self._spool:
                # Older messages wait in the spool: queue behind them to keep each series in
                # order.
                self._to_spool(records)
                return
            for index, record in enumerate(records):
                if not self._produce(record):
                    self._to_spool(records[index:])
                    return

    def describe(self, snapshot: Snapshot) -> Iterator[str]:
        for topic, key, value, _ in self._records(snapshot):
            shown = _printable(key.decode()) if key is not None else ""
            yield f"topic={topic} key={shown} value={_printable(value.decode())}"

    def stats(self) -> dict[str, float]:
        result = super().stats()
        spool = self._spool
        errors, lost, records, size = self._spool_io_errors, self._spool_io_lost, 0, 0
        if spool is not None:  # not `if spool`: an empty spool is falsy
            errors, lost = errors + spool.io_errors, lost + spool.io_lost
            records, size = spool.records, spool.bytes
        result.update({
            "in_flight": len(self._producer) if self._producer is not None else 0,
            "spooled_now": records, "spool_bytes": size, "spool_io_errors": errors,
            "spool_io_lost": lost, "outages": self._outage.outages,
        })
        return result

    # -- internals ------------------------------------------------------------------------
    def _produce(self, record: ReadyMessage) -> bool:
        """Hand one message to the producer; False when its queue is full (spill instead)."""
        assert self._producer is not None
        topic, key, value, message_id = record
        try:
            # Positional: by keyword, parsing the arguments cost more than the rest of the
            # call (12,600 against 7,050 instructions a message, callgrind).
            self._producer.produce(topic, value, key, -1, None, None, 0,
                                   [(ID_HEADER, message_id)])
        except BufferError:
            return False
        except KafkaException as exc:  # a message the producer refuses outright, e.g. too large
            self.counters["failed"] += 1
            error = exc.args[0]
            self._problems.report(f"produce:{error.code()}", f"forwarder {self.name}: message "
                                  f"for topic {topic} refused ({error.str()}); dropped")
            return True
        self.counters["produced"] += 1
        # A delivery report's message has no headers, and one that goes back to the spool must
        # keep its id. (A per-message delivery callback would carry it, but doubled the
        # flush-to-acknowledgement time of bench/kafka.py.)
        self._ids_in_flight[value] = message_id
        return True

    def _to_spool(self, records: list[ReadyMessage]) -> int:
        assert self._spool is not None
        lost_before = self._spool.io_lost
        dropped = self._spool.append([Record._make(record) for record in records])
        self.counters["spooled"] += len(records) - dropped
        return self._count_spool_drops(dropped, self._spool.io_lost - lost_before)

    def _count_spool_drops(self, dropped: int, io_lost: int) -> int:
        """Count what the spool did not keep: ``io_lost`` of ``dropped`` the disk refused (the
        spool logged those), the rest did not fit."""
        full = dropped - io_lost
        if full:
            self.counters["spool_dropped"] += full
            self._problems.report("spool_full", f"forwarder {self.name}: spool {self._spool_dir} "
                                  f"is full ({self._spool_max_bytes} bytes); dropped {full} "
                                  "messages")
        return dropped

    def _move_requeued_to_spool(self) -> int:
        assert self._spool is not None
        if not self._requeue:
            return 0
        records, self._requeue = self._requeue, []
        lost_before = self._spool.io_lost
        dropped = self._spool.push_front(records)
        self.counters["spooled"] += len(records) - dropped
        return self._count_spool_drops(dropped, self._spool.io_lost - lost_before)

    def _drain_spool(self) -> None:
        assert self._spool is not None and self._producer is not None
        budget = self._drain_window - len(self._producer)
        while budget > 0:
            record = self._spool.peek()
            if record is None or not self._produce(record):
                break
            self._spool.pop()
            self.counters["spool_sent"] += 1
            budget -= 1
        self._spool.commit()  # what was handed on is never sent from the spool again

    def _pump_loop(self) -> None:
        assert self._producer is not None
        while not self._stopping.is_set():
            try:
                self._producer.poll(0.05)
                with self._lock:
                    if self._fatal:
                        self._replace_producer()
                    self._move_requeued_to_spool()
                    self._drain_spool()
                    assert self._spool is not None
                    self._outage.tick(time.monotonic(), len(self._producer),
                                      self._spool.records, self.counters["delivered"])
            except Exception as exc:  # the pump must outlive any surprise, or nothing drains
                self.counters["pump_errors"] += 1
                if self.counters["pump_errors"] == 1:
                    self.log.exception("forwarder %s: delivery pump error; it goes on",
                                       self.name)
                else:
                    self._problems.report("pump", f"forwarder {self.name}: delivery pump error "
                                          f"({type(exc).__name__}: {exc}); it goes on")
                time.sleep(0.5)

    def _replace_producer(self) -> None:
        """After a fatal producer error (the idempotent producer lost its sequence), move what it
        still holds back to the spool and start a new producer."""
        old = self._producer
        assert old is not None
        old.purge(in_queue=True, in_flight=True)
        old.flush(1.0)
        self._fatal = False
        self._producer = self._new_producer(self._bootstrap)
        self._problems.report("replaced", f"forwarder {self.name}: the broker no longer accepts "
                              "the producer's idempotence state; started a new producer and "
                              "queued its unacknowledged messages again")

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        key, value = message.key(), message.value() or b""
        message_id = self._ids_in_flight.pop(value, b"")
        if error is None:
            self.counters["delivered"] += 1
            return
        code = error.code()
        record = Record(message.topic() or "", key, value, message_id)
        if code in _PRODUCER_STATE_LOST:
            self._fatal = True  # the pump replaces the producer
        if code in _PURGED or code in _TRANSIENT or code in _PRODUCER_STATE_LOST \
                or error.retriable():
            if code not in _PURGED:
                self.counters["retried"] += 1
                self._problems.report("delivery_transient", f"forwarder {self.name}: delivery "
                                      f"failed ({error.str()}); messages go back to the spool")
            self._requeue.append(record)
            return
        self.counters["failed"] += 1
        self._problems.report(f"delivery:{code}", f"forwarder {self.name}: message for topic "
                              f"{record.topic} cannot be delivered ({error.str()}); dropped")

    def _on_error(self, error: KafkaError) -> None:
        self.counters["broker_errors"] += 1
        if error.fatal():
            self._fatal = True
        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            return  # always follows the error that says why (resolve, connect, login): counted
        if code == KafkaError._AUTHENTICATION:
            kind, what = "authentication", "authentication failed"
        elif code == KafkaError._RESOLVE:
            kind, what = "connection", "cannot resolve the broker address"
        elif code == KafkaError._TRANSPORT:
            kind, what = "connection", "broker unreachable"
        else:
            kind, what = f"error:{code}", "producer error"
        # One line per kind of problem per minute: a broker that is down produces an error per
        # connection attempt, and "cannot resolve" and "all brokers down" are one problem.
        self._problems.report(kind, f"forwarder {self.name}: kafka {what}: {error.str()}; "
                              "messages wait in memory, then in the spool, until it recovers")
