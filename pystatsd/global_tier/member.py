"""``mode: global``: one member of the global tier.

The member consumes the partials topic in a consumer group (Kafka shares its partitions among
the members and moves them when one joins, leaves or dies), merges the partials of each
(series, interval) as they come, and closes an interval ``lateness`` seconds after its end:
it then produces the interval's global statistics to the output topic, and in the *same*
Kafka transaction commits the group's offsets and a progress record per input partition.

What makes that exactly once for a ``read_committed`` reader:

- The offset committed for a partition is the first one that fed an interval still open (or
  everything read, when none is open): whatever a member held but had not emitted is read
  again by whoever owns the partition next, and nothing before the offset is needed again.
- Offsets, output and progress commit together or not at all. A member killed between two
  transactions leaves nothing half-done; a member that restarts under the same
  ``transactional_id`` fences its former self.
- The progress record says up to which interval a partition's partials were emitted
  (``closed_through``), so the next owner, re-reading from the offset, drops the partials of
  intervals already emitted (they can lie past the offset: a slow host's partial of an older
  interval behind a newer one) instead of emitting them twice. Kafka's offset-commit metadata
  could carry this, but the embedded Tansu broker does not keep it, so it has a topic.

A partial delivered twice (a host's send retried after a lost acknowledgement) has the same
``pystatsd-id`` header and is merged once (``duplicates``).

A partial of an interval this member already closed (a host that was cut off and replays its
spool) is dropped and counted as ``late_dropped``, with a rate-limited log line: the global
record of that interval is out already, and a correction would need its consumers to merge.

Closing waits until the member has read each partition it was given up to where that partition
ended at the assignment (and a consume comes back short), so a member that takes over a backlog
reads it before it closes what it feeds. If a transaction fails the
member aborts it and exits with status 1; the restart (systemd's, or the next owner after a
rebalance) re-reads from the committed offsets, so nothing is lost nor doubled.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from forwarders.kafka.formats import make_encoder
from forwarders.kafka.forwarder import ID_HEADER, message_id
from forwarders.kafka.partials import decode_partial
from pystatsd.distribution import Percentiles, percentile_key
from pystatsd.global_tier.partial_state import SeriesMerge
from pystatsd.snapshot import SeriesStats, Snapshot

__all__ = ["GlobalMember", "run_global_member"]

log = logging.getLogger("pystatsd.global")

Config = dict[str, Any]
SeriesId = tuple[str, str, tuple[tuple[str, str], ...]]
BATCH = 1000
_LOG_EVERY = 60.0
_TIMEOUT = 30.0


class GlobalConfigError(ValueError):
    """The ``global`` section cannot run."""


class GlobalMember:
    """One member: see the module docstring. :meth:`run` until :meth:`stop`."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        section = config["global"]
        if not section["kafka_broker"]:
            raise GlobalConfigError("global.kafka_broker: required in mode: global")
        self.interval = float(config["flush_interval"])
        self.lateness = float(section["lateness"])
        self.percentiles: Percentiles = [(float(p), percentile_key(p))
                                         for p in config["percentiles"]]
        self.exact_limit = int(config["timer_exact_samples"])
        self.accuracy = float(config["sketch_relative_accuracy"])
        self.broker = section["kafka_broker"]
        self.input_topic = section["input_topic"]
        self.output_topic = section["output_topic"]
        self.progress_topic = section["progress_topic"] or self.input_topic + "-progress"
        self.group_id = section["group_id"]
        self.transactional_id = (section["transactional_id"]
                                 or f"{self.group_id}-{socket.gethostname()}")
        self.session_timeout = float(section["session_timeout"])
        self.encode = make_encoder(section["output_format"])
        self.clock = clock
        self.counts = {"partials": 0, "late_dropped": 0, "undecodable": 0,
                       "intervals_closed": 0, "records_produced": 0, "transactions": 0,
                       "duplicates": 0}
        # Per input partition: open intervals (start -> series -> merge), the first offset
        # that fed each, the next offset to read, the last interval emitted.
        self._open: dict[int, dict[float, dict[SeriesId, SeriesMerge]]] = {}
        self._first_offset: dict[int, dict[float, int]] = {}
        self._ids: dict[int, dict[float, set[bytes]]] = {}  # pystatsd-id of each partial merged
        self._position: dict[int, int] = {}
        self._closed_through: dict[int, float] = {}
        self._catching_up: dict[int, int] = {}  # partition -> its end when it was assigned
        self._closed_horizon = -math.inf
        self._stopping = False
        self._last_log: dict[str, float] = {}
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # -- set-up -----------------------------------------------------------------------
    def open(self) -> None:
        self._ensure_progress_topic()
        self._producer = Producer({"bootstrap.servers": self.broker,
                                   "transactional.id": self.transactional_id,
                                   "enable.idempotence": True, "acks": "all",
                                   "linger.ms": 5})
        self._producer.init_transactions(_TIMEOUT)
        self._consumer = Consumer({
            "bootstrap.servers": self.broker, "group.id": self.group_id,
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(self.session_timeout * 1000),
            "heartbeat.interval.ms": max(100, int(self.session_timeout * 1000 / 5)),
        })
        self._consumer.subscribe([self.input_topic], on_assign=self._assigned,
                                 on_revoke=self._revoked, on_lost=self._revoked)
        log.info("global member %s of group %s: %s -> %s (every %ss, lateness %ss)",
                 self.transactional_id, self.group_id, self.input_topic, self.output_topic,
                 self.interval, self.lateness)

    def _ensure_progress_topic(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.broker})
        known = admin.list_topics(timeout=_TIMEOUT).topics
        if self.progress_topic in known:
            return
        # Compacted: a new owner needs only the latest record of each partition (the key).
        futures = admin.create_topics([NewTopic(self.progress_topic, 1, 1,
                                                config={"cleanup.policy": "compact"})])
        for future in futures.values():
            try:
                future.result(_TIMEOUT)
            except KafkaException as exc:  # another member made it first
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

    def _read_progress(self) -> dict[int, float]:
        """The last ``closed_through`` committed for each input partition."""
        reader = Consumer({"bootstrap.servers": self.broker,
                           "group.id": self.group_id + "-progress-reader",
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
        try:
            progress: dict[int, float] = {}
            part = TopicPartition(self.progress_topic, 0)
            low, high = reader.get_watermark_offsets(part, timeout=_TIMEOUT)
            if high <= low:
                return progress
            reader.assign([TopicPartition(self.progress_topic, 0, low)])
            deadline = time.monotonic() + 10.0  # an open transaction there holds read_committed
            done = False
            while not done and time.monotonic() < deadline:
                for message in reader.consume(BATCH, 0.5):
                    if message.error() is None:
                        record = orjson.loads(message.value() or b"{}")
                        if record.get("topic") == self.input_topic:
                            progress[int(record["partition"])] = float(record["closed_through"])
                    if (message.offset() or 0) >= high - 1:  # past it: control records only
                        done = True
                if reader.position([part])[0].offset >= high - 1:
                    done = True
            return progress
        finally:
            reader.close()

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        progress = self._read_progress()
        committed = consumer.committed(partitions, timeout=_TIMEOUT)
        for part in committed:
            number = part.partition
            self._open[number] = {}
            self._first_offset[number] = {}
            self._ids[number] = {}
            self._closed_through[number] = progress.get(number, -math.inf)
            low, high = consumer.get_watermark_offsets(TopicPartition(self.input_topic, number),
                                                       timeout=_TIMEOUT)
            self._position[number] = part.offset if part.offset >= 0 else low
            if self._position[number] < high:
                self._catching_up[number] = high
        self._closed_horizon = -math.inf  # what was rebuilt may be due already
        log.info("global member %s: assigned partitions %s", self.transactional_id,
                 sorted(p.partition for p in partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # What was open here is not lost: the next owner reads it again from the offsets.
        for part in partitions:
            self._open.pop(part.partition, None)
            self._first_offset.pop(part.partition, None)
            self._ids.pop(part.partition, None)
            self._position.pop(part.partition, None)
            self._closed_through.pop(part.partition, None)
            self._catching_up.pop(part.partition, None)
        log.info("global member %s: revoked partitions %s", self.transactional_id,
                 sorted(p.partition for p in partitions))

    # -- the loop -----------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True

    def run(self) -> int:
        assert self._consumer is not None and self._producer is not None
        try:
            while not self._stopping:
                batch = self._consumer.consume(BATCH, 0.2)
                for message in batch:
                    self._take(message)
                if len(batch) < BATCH and self._caught_up():
                    self._close_due()
        except KafkaException as exc:
            log.error("global member %s: %s; exiting so that a restart re-reads from the "
                      "committed offsets", self.transactional_id, exc)
            return 1
        finally:
            self._consumer.close()  # leave the group now: the others rebalance at once
        log.info("global member %s stopped: %s", self.transactional_id, self.counts)
        return 0

    def _caught_up(self) -> bool:
        """True once every partition assigned has been read to where it ended at assignment:
        until then an interval it feeds may still be missing partials the log holds."""
        if self._catching_up:
            assert self._consumer is not None
            for number, end in list(self._catching_up.items()):
                if self._position.get(number, -1) >= end:
                    del self._catching_up[number]
            if self._catching_up:
                positions = self._consumer.position(
                    [TopicPartition(self.input_topic, n) for n in self._catching_up])
                for part in positions:
                    if part.offset >= self._catching_up[part.partition]:
                        del self._catching_up[part.partition]
        return not self._catching_up

    def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self._report("consume", f"consume error: {error}")
            return
        number, offset = message.partition(), message.offset()
        if number is None or offset is None or number not in self._open:  # revoked meanwhile
            return
        self._position[number] = offset + 1
        try:
            partial = decode_partial(message.value() or b"")
            start = float(partial["interval_start"])
            seconds = float(partial["interval"])
            series: SeriesId = (str(partial["name"]), str(partial["type"]), partial["tags"])
            host = str(partial["host"])
        except (ValueError, KeyError, TypeError) as exc:
            self.counts["undecodable"] += 1
            self._report("undecodable", f"partition {number} offset {offset}: not a partial: "
                         f"{exc}")
            return
        bucket = math.floor(start / self.interval) * self.interval
        if bucket <= self._closed_through[number]:
            self.counts["late_dropped"] += 1
            self._report("late", f"partial of {series[0]} for interval {bucket} from {host} "
                         "came after the interval closed: dropped (late_dropped)")
            return
        intervals = self._open[number]
        table = intervals.get(bucket)
        if table is None:
            table = intervals[bucket] = {}
            self._first_offset[number][bucket] = offset
            self._ids[number][bucket] = set()
        identity = _message_id(message)
        ids = self._ids[number][bucket]
        if identity is not None:
            if identity in ids:  # a host's partial delivered twice (a retried send)
                self.counts["duplicates"] += 1
                return
            ids.add(identity)
        merge = table.get(series)
        if merge is None:
            merge = table[series] = SeriesMerge(series[1])
        try:
            merge.add(partial["partial"], start + seconds, host, self.exact_limit,
                      self.accuracy)
        except (ValueError, KeyError, TypeError) as exc:  # a partial of the wrong shape
            self.counts["undecodable"] += 1
            self._report("undecodable", f"partition {number} offset {offset}: {exc}")
            return
        self.counts["partials"] += 1

    def _close_due(self) -> None:
        """Emit every interval whose lateness window has passed, in one transaction."""
        horizon = math.floor((self.clock() - self.lateness) / self.interval) * self.interval \
            - self.interval  # the last interval start whose end + lateness is past
        if horizon <= self._closed_horizon or not self._open:
            return
        assert self._consumer is not None and self._producer is not None
        producer = self._producer
        closing: dict[float, dict[SeriesId, SeriesMerge]] = {}
        for number, intervals in self._open.items():
            for bucket in [b for b in intervals if b <= horizon]:
                table = intervals.pop(bucket)
                self._first_offset[number].pop(bucket)
                self._ids[number].pop(bucket)
                into = closing.setdefault(bucket, {})
                for series, merge in table.items():  # one series lives in one partition
                    into[series] = merge
            self._closed_through[number] = max(self._closed_through[number], horizon)
        producer.begin_transaction()
        try:
            produced = self._produce_intervals(closing)
            offsets = []
            for number in self._open:
                firsts = self._first_offset[number].values()
                offset = min(firsts) if firsts else self._position.get(number)
                if offset is not None:
                    offsets.append(TopicPartition(self.input_topic, number, offset))
                record = {"topic": self.input_topic, "partition": number,
                          "closed_through": self._closed_through[number]}
                producer.produce(self.progress_topic, key=f"{self.input_topic}/{number}",
                                 value=orjson.dumps(record))
            producer.send_offsets_to_transaction(offsets,
                                                 self._consumer.consumer_group_metadata(),
                                                 _TIMEOUT)
            producer.commit_transaction(_TIMEOUT)
        except KafkaException:
            try:
                producer.abort_transaction(_TIMEOUT)
            except KafkaException:
                pass
            raise
        self._closed_horizon = horizon
        self.counts["transactions"] += 1
        self.counts["intervals_closed"] += len(closing)
        self.counts["records_produced"] += produced
        if closing:
            log.info("global member %s: closed %s (%d records); %s", self.transactional_id,
                     sorted(closing), produced, self.counts)

    def _produce_intervals(self, closing: dict[float, dict[SeriesId, SeriesMerge]]) -> int:
        assert self._producer is not None
        produced = 0
        for bucket, table in sorted(closing.items()):
            snapshot = Snapshot(bucket, self.interval, self.group_id)
            for (name, kind, tags), merge in sorted(table.items()):
                stats = merge.stats(self.interval, self.percentiles, self.accuracy)
                if stats is None:
                    continue
                series = SeriesStats(name, kind, tags, stats)
                value = self.encode(series, snapshot)
                if value is None:
                    continue
                self._producer.produce(self.output_topic, key=series.key.encode(), value=value,
                                       headers=[(ID_HEADER, message_id(series, snapshot))])
                produced += 1
                if produced % 10_000 == 0:
                    self._producer.poll(0)
        return produced

    def _report(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -math.inf) >= _LOG_EVERY:
            self._last_log[kind] = now
            log.warning("global member %s: %s (%s)", self.transactional_id, text, self.counts)


def _message_id(message: Message) -> bytes | None:
    for header in message.headers() or ():
        if header[0] == ID_HEADER and isinstance(header[1], bytes):
            return header[1]
    return None


def run_global_member(config: Config) -> int:
    """Run one member in this process until SIGTERM or SIGINT; return the exit status."""
    try:
        member = GlobalMember(config)
        member.open()
    except (GlobalConfigError, KafkaException) as exc:
        log.error("cannot start: %s", exc)
        return 1
    signal.signal(signal.SIGTERM, lambda signum, frame: member.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: member.stop())
    return member.run()
