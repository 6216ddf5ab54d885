"""The ``statsd_relay`` forwarder: raw statsd lines to backends chosen by consistent hash.

``hashing`` holds the hash schemes (jump, shard_map, ketama, carbon), ``groups`` the destination
groups, ``backend`` one destination's queue and socket, ``forwarder`` the routing and sending
threads. docs/relay.md is the user's guide."""

from forwarders.statsd_relay.forwarder import StatsdRelayForwarder

__all__ = ["StatsdRelayForwarder"]
