"""The ``statsite_proxy`` relay: statsite ASCII and binary commands by statsite-proxy's ketama
ring. See docs/graphite.md."""

from forwarders.statsite_proxy.forwarder import (
    StatsiteProxyConfigError,
    StatsiteProxyForwarder,
    command_key,
)

__all__ = ["StatsiteProxyConfigError", "StatsiteProxyForwarder", "command_key"]
