"""Consistent hashing over destinations, as graphite's carbon places keys.

Two rings, both 100 points per destination at the first two bytes of
MD5(``"('<host>', '<instance>'):<i>"``), a key at MD5(path)[:2] owned by the first point at or
after it:

* ``consistent_hashing``: carbon up to 0.9.12 and carbon-relay-ng's ``consistentHashing``;
  points that collide are kept side by side, ordered by host then instance
  (:class:`forwarders.statsd_relay.hashing.CarbonRouter`);
* ``consistent_hashing_v2``: carbon since graphite-project/carbon#196 (graphite-carbon 1.x,
  carbon-relay-ng's ``consistentHashing-v2``): a point that lands on a taken position moves up
  by one until it is free, destinations added in the listed order.

With a replication factor above 1, a key goes to the owner and the next distinct destinations
along the ring, as carbon's ``get_nodes``."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from forwarders.statsd_relay.hashing import CarbonRouter, carbon_position

__all__ = ["CarbonRing", "node_name"]

REPLICAS = 100


def node_name(host: str, instance: str | None) -> str:
    """Carbon's ``"%s" % (host, instance)`` of a destination."""
    return f"('{host}', {'None' if instance is None else repr(instance)})"


class CarbonRing:
    """Given each destination's (host, instance), in config order, and the ring version."""

    def __init__(self, nodes: Sequence[tuple[str, str | None]], version: int) -> None:
        if not nodes:
            raise ValueError("a consistent hashing route needs at least one destination")
        self.count = len(nodes)
        if version == 1:
            router = CarbonRouter(range(len(nodes)), [h for h, _ in nodes],
                                  [i for _, i in nodes], REPLICAS)
            self.points = list(router.points)
            self.owners = list(router.point_slot)
            return
        taken: dict[int, int] = {}
        for index, (host, instance) in enumerate(nodes):
            name = node_name(host, instance)
            for i in range(REPLICAS):
                position = carbon_position(f"{name}:{i}".encode())
                while position in taken:
                    position += 1
                taken[position] = index
        self.points = sorted(taken)
        self.owners = [taken[p] for p in self.points]

    def destinations(self, key: bytes, replication: int = 1) -> list[int]:
        """The destination indexes of ``key``: the owner first, then the next distinct ones."""
        start = bisect.bisect_left(self.points, carbon_position(key)) % len(self.points)
        if replication <= 1:
            return [self.owners[start]]
        chosen: list[int] = []
        wanted = min(replication, self.count)
        for step in range(len(self.points)):
            owner = self.owners[(start + step) % len(self.points)]
            if owner not in chosen:
                chosen.append(owner)
                if len(chosen) == wanted:
                    break
        return chosen
