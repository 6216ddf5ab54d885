"""Reading a topic back, for operators (tools/kafka_tail.py), tests and benchmarks.

Reads by ``assign()`` over every partition rather than ``subscribe()``: no consumer group, no
rebalance wait (Tansu takes ~20 s for a first rebalance), nothing committed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

__all__ = ["TopicMessage", "read_topic", "tail_topic"]


class TopicMessage(NamedTuple):
    key: bytes | None
    partition: int
    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        """The value of the header ``name``, or None."""
        return next((value for key, value in self.headers if key == name), None)


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"pystatsd-reader-{uuid.uuid4().hex}",  # required, never joined
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "log_level": 0,
    })


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        metadata = consumer.list_topics(topic, timeout=max(0.5, deadline - time.monotonic()))
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        if time.monotonic() >= deadline:
            return []
        time.sleep(0.1)


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0,
               idle: float = 1.0) -> list[TopicMessage]:
    """Every message in ``topic`` from its start, ordered by partition then offset.

    Stops ``idle`` seconds after the last message arrived, or at ``timeout``. Watermarks
    are not used to find the end: Tansu's high watermark can lag the last offset."""
    messages: list[TopicMessage] = []
    for message in tail_topic(bootstrap, topic, from_beginning=True, idle_timeout=idle,
                              deadline=time.monotonic() + timeout,
                              first_timeout=timeout):
        messages.append(message)
    return sorted(messages, key=lambda m: (m.partition, m.offset))


def tail_topic(bootstrap: str, topic: str, from_beginning: bool = False,
               idle_timeout: float | None = None, deadline: float | None = None,
               first_timeout: float = 30.0) -> Iterator[TopicMessage]:
    """Yield messages as they arrive in ``topic`` (from its start or from now); stop after
    ``idle_timeout`` seconds without one (never, when None) or at the monotonic ``deadline``.
    Waits up to ``first_timeout`` seconds for the topic to exist."""
    consumer = _consumer(bootstrap)
    try:
        partitions = _partitions(consumer, topic, first_timeout)
        if not partitions:
            return
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        last = time.monotonic()
        while idle_timeout is None or time.monotonic() - last < idle_timeout:
            if deadline is not None and time.monotonic() >= deadline:
                return
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            last = time.monotonic()
            headers: Any = message.headers() or ()  # a list of (str, bytes | None)
            yield TopicMessage(message.key(), message.partition() or 0, message.offset() or 0,
                               message.value() or b"",
                               tuple((key, bytes(value or b"")) for key, value in headers))
    finally:
        consumer.close()
