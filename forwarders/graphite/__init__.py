"""The ``graphite`` forwarder: flushes to carbon (plaintext or pickle), optionally with Etsy
statsd's graphite naming. See docs/graphite.md."""

from forwarders.graphite.forwarder import GraphiteConfigError, GraphiteForwarder

__all__ = ["GraphiteConfigError", "GraphiteForwarder"]
