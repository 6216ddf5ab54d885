"""The ``carbon_routes`` relay: carbon-relay-ng's routes for graphite lines. See
docs/graphite.md."""

from forwarders.carbon_routes.forwarder import CarbonRoutesConfigError, CarbonRoutesForwarder

__all__ = ["CarbonRoutesConfigError", "CarbonRoutesForwarder"]
