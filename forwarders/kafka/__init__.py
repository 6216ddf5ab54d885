"""The Kafka forwarder (``type: kafka``): see :mod:`forwarders.kafka.forwarder` and docs/kafka.md.

Modules: ``forwarder`` (the class and its config schema), ``formats`` (legacy, json, influx
message encoders), ``spool`` (the bounded on-disk queue), ``embedded_broker`` (a local Tansu
broker for when no ``kafka_broker`` is configured, for tests and for the demo)."""

from forwarders.kafka.forwarder import KafkaConfigError, KafkaForwarder

__all__ = ["KafkaConfigError", "KafkaForwarder"]
