"""Reading a topic back, for operators (tools/kafka_tail.py), tests and benchmarks.

Reads by ``assign()`` over every partition rather than ``subscribe()``: no consumer group, no
rebalance wait (Tansu takes ~20 s for a first rebalance), nothing committed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

__all__ = ["BrokerUnreachable", "TopicMessage", "follow_topic", "read_topic", "tail_topic"]


class TopicMessage(NamedTuple):
    key: bytes | None
    partition: int
    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        """The value of the header ``name``, or None."""
        return next((value for key, value in self.headers if key == name), None)


class BrokerUnreachable(ConnectionError):
    """No broker answered at the bootstrap address in time, or every broker went away."""


def _consumer(bootstrap: str, errors: list[KafkaError]) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"pystatsd-reader-{uuid.uuid4().hex}",  # required, never joined
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        # A reader shows what arrives as it arrives, and a demo stopping right after its last
        # flush has about a second before the broker goes: do not sit on a fetch for 500 ms.
        "fetch.wait.max.ms": 100,
        "error_cb": errors.append,
        "log_level": 0,
    })


def _partitions(consumer: Consumer, bootstrap: str, topic: str, timeout: float,
                on_wait: Callable[[str], None]) -> list[int]:
    """The topic's partitions, once it exists; [] when it does not after ``timeout`` seconds.
    Raises :class:`BrokerUnreachable` when no broker answered within ``timeout``."""
    deadline = time.monotonic() + timeout
    answered = said_no_broker = said_no_topic = False
    while True:
        try:
            metadata = consumer.list_topics(
                topic, timeout=min(1.0, max(0.2, deadline - time.monotonic())))
        except KafkaException:
            if time.monotonic() >= deadline:
                if answered:
                    raise BrokerUnreachable(f"the broker at {bootstrap} went away") from None
                raise BrokerUnreachable(f"no broker answered at {bootstrap} within "
                                        f"{timeout:g} s") from None
            if not said_no_broker:
                on_wait(f"no broker answers at {bootstrap} yet; still trying")
                said_no_broker = True
            continue
        answered = True
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        if time.monotonic() >= deadline:
            return []
        if not said_no_topic:
            on_wait(f"connected to {bootstrap}; waiting for topic {topic!r} to appear")
            said_no_topic = True
        time.sleep(0.1)


def _broker_answers(consumer: Consumer, topic: str, timeout: float) -> bool:
    try:
        consumer.list_topics(topic, timeout=timeout)
    except KafkaException:
        return False
    return True


def follow_topic(bootstrap: str, topic: str, from_beginning: bool = False,
                 first_timeout: float = 30.0, gone_after: float | None = None,
                 on_wait: Callable[[str], None] = lambda _: None,
                 ) -> Iterator[TopicMessage | None]:
    """Yield each message of ``topic`` as it arrives (from its start or from now), and None
    after each poll of about 0.1 s that brought nothing, so the caller can keep its own time.

    Waits up to ``first_timeout`` seconds for a broker and for the topic to exist (returns at
    once if the topic still does not; raises :class:`BrokerUnreachable` if no broker answered),
    telling ``on_wait`` once about each wait. With ``gone_after``, raises
    :class:`BrokerUnreachable` once every broker has been down for that many seconds; without
    it, waits for them to come back, as librdkafka does."""
    errors: list[KafkaError] = []
    consumer = _consumer(bootstrap, errors)
    try:
        partitions = _partitions(consumer, bootstrap, topic, first_timeout, on_wait)
        if not partitions:
            return
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        down_since: float | None = None
        while True:
            message = consumer.poll(0.1)
            if any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors):
                down_since = down_since or time.monotonic()
            errors.clear()
            if message is not None:
                if message.error():
                    raise KafkaException(message.error())
                down_since = None
                headers: Any = message.headers() or ()  # a list of (str, bytes | None)
                yield TopicMessage(message.key(), message.partition() or 0,
                                   message.offset() or 0, message.value() or b"",
                                   tuple((key, bytes(value or b"")) for key, value in headers))
                continue
            if down_since is not None and gone_after is not None:
                if _broker_answers(consumer, topic, 0.2):
                    down_since = None
                elif time.monotonic() - down_since >= gone_after:
                    raise BrokerUnreachable(f"the broker at {bootstrap} went away")
            yield None
    finally:
        consumer.close()


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
    last: float | None = None  # idle time counts from when the topic was found
    for message in follow_topic(bootstrap, topic, from_beginning, first_timeout):
        now = time.monotonic()
        if last is None:
            last = now
        if message is not None:
            last = now
            yield message
        elif idle_timeout is not None and now - last >= idle_timeout:
            return
        if deadline is not None and now >= deadline:
            return
