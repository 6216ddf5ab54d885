"""Hash schemes that pick a metric's owner among a group's backends.

Each scheme is bit-compatible with the relay it replaces, so swapping that relay for pystatsd
moves no metric to another aggregator:

* ``jump``      FNV-1a 64 + Jump Consistent Hash, buckets in listed order (jjneely/statsrelay,
                carbon-c-relay ``jump_fnv1a``);
* ``shard_map`` MurmurHash3 x86_32, seed 0xaccd3d34, modulo the number of virtual shards
                (lyft/statsrelay 2.x and 3.x);
* ``ketama``    libketama's weighted MD5 continuum (statsite-proxy);
* ``carbon``    graphite carbon's MD5 ring, 100 replicas per (host, instance), 16-bit positions
                (carbon-relay, carbon-relay-ng ``consistentHashing``).

A router maps a key to a *slot* index (one per configured entry, so repeated entries weigh
more) and every slot to a backend index. ``owner`` is the plain scheme; ``fallback`` is the
scheme's own deterministic answer when the owner's backend is dead (next bucket of the live
ones, next shard, next ring point) and is used only by ``dead_backend_policy: reroute``.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import struct
from collections.abc import Collection, Sequence

import mmh3

__all__ = [
    "SCHEMES",
    "CarbonRouter",
    "JumpRouter",
    "KetamaRouter",
    "Router",
    "ShardMapRouter",
    "carbon_position",
    "fnv1a64",
    "jump_hash",
    "ketama_hash",
    "make_router",
    "murmur3_32",
]

FNV64_OFFSET = 14695981039346656037
FNV64_PRIME = 1099511628211
MASK64 = (1 << 64) - 1
LYFT_MURMUR_SEED = 0xACCD3D34


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bit, over ``data`` (jjneely/statsrelay ``Fnv1a64``)."""
    h = FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV64_PRIME) & MASK64
    return h


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's Jump Consistent Hash of a 64-bit ``key`` into ``buckets`` buckets."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def murmur3_32(data: bytes, seed: int = LYFT_MURMUR_SEED) -> int:
    """MurmurHash3 x86_32 as an unsigned int (lyft/statsrelay uses seed 0xaccd3d34)."""
    return mmh3.hash(data, seed, signed=False)


def ketama_hash(data: bytes) -> int:
    """libketama's key point: the first four bytes of MD5, read little-endian."""
    return int.from_bytes(hashlib.md5(data).digest()[:4], "little")


def carbon_position(data: bytes) -> int:
    """carbon's ring position: the first two bytes of MD5, read big-endian."""
    return int.from_bytes(hashlib.md5(data).digest()[:2], "big")


def _f32(value: float) -> float:
    """Round to IEEE single precision, as libketama's ``float`` arithmetic does."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


class Router:
    """Maps a hash key to the slot that owns it. ``slot_backend[i]`` is slot i's backend."""

    scheme = ""

    def __init__(self, slot_backend: Sequence[int]) -> None:
        if not slot_backend:
            raise ValueError("a hash group needs at least one backend")
        self.slot_backend = list(slot_backend)

    def owner_slot(self, key: bytes) -> int:
        raise NotImplementedError

    def owner(self, key: bytes) -> int:
        """The backend index that owns ``key``."""
        return self.slot_backend[self.owner_slot(key)]

    def fallback(self, key: bytes, dead: Collection[int]) -> int | None:
        """The backend that takes ``key`` while the backends in ``dead`` are down, or None when
        every backend is dead. Keys whose owner is alive never move."""
        owner = self.owner(key)
        if owner not in dead:
            return owner
        return self._next_live(key, dead)

    def _next_live(self, key: bytes, dead: Collection[int]) -> int | None:
        raise NotImplementedError


class JumpRouter(Router):
    """jjneely/statsrelay: slot = Jump(FNV1a64(key), number of listed entries)."""

    scheme = "jump"

    def owner_slot(self, key: bytes) -> int:
        return jump_hash(fnv1a64(key), len(self.slot_backend))

    def _next_live(self, key: bytes, dead: Collection[int]) -> int | None:
        # Jump over the live slots only (listed order kept): the dead share spreads evenly over
        # the survivors, and the same dead set always gives the same answer.
        live = [b for b in self.slot_backend if b not in dead]
        if not live:
            return None
        return live[jump_hash(fnv1a64(key), len(live))]


class ShardMapRouter(Router):
    """lyft/statsrelay: slot = murmur3_x86_32(key, 0xaccd3d34) mod number of shards."""

    scheme = "shard_map"

    def owner_slot(self, key: bytes) -> int:
        return murmur3_32(key) % len(self.slot_backend)

    def _next_live(self, key: bytes, dead: Collection[int]) -> int | None:
        shards = len(self.slot_backend)
        first = self.owner_slot(key)
        for step in range(1, shards):
            backend = self.slot_backend[(first + step) % shards]
            if backend not in dead:
                return backend
        return None


class _RingRouter(Router):
    """A sorted ring of (point, slot); the owner is the first point >= the key's, wrapping."""

    def __init__(self, slot_backend: Sequence[int], ring: list[tuple[int, int]]) -> None:
        super().__init__(slot_backend)
        self.points = [point for point, _ in ring]
        self.point_slot = [slot for _, slot in ring]

    def key_point(self, key: bytes) -> int:
        raise NotImplementedError

    def _index(self, key: bytes) -> int:
        return bisect.bisect_left(self.points, self.key_point(key)) % len(self.points)

    def owner_slot(self, key: bytes) -> int:
        return self.point_slot[self._index(key)]

    def _next_live(self, key: bytes, dead: Collection[int]) -> int | None:
        start = self._index(key)
        count = len(self.points)
        for step in range(1, count):
            backend = self.slot_backend[self.point_slot[(start + step) % count]]
            if backend not in dead:
                return backend
        return None


class KetamaRouter(_RingRouter):
    """libketama as shipped with statsite-proxy.

    Entry i with weight w_i gets floor(w_i / sum(w) * 40 * N) MD5 digests of ``"<addr>-<k>"``
    (computed in single precision, as libketama does), four little-endian points per digest."""

    scheme = "ketama"

    def __init__(self, slot_backend: Sequence[int], addresses: Sequence[str],
                 weights: Sequence[int]) -> None:
        total = _f32(float(sum(weights)))
        count = len(addresses)
        ring: list[tuple[int, int]] = []
        for slot, (address, weight) in enumerate(zip(addresses, weights, strict=True)):
            share = _f32(_f32(float(weight)) / total)
            digests = math.floor(_f32(share * 40.0 * float(count)))
            for k in range(digests):
                digest = hashlib.md5(f"{address}-{k}".encode()).digest()
                for h in range(4):
                    ring.append((int.from_bytes(digest[4 * h:4 * h + 4], "little"), slot))
        ring.sort()
        if not ring:
            raise ValueError("ketama: the weights give no ring points")
        super().__init__(slot_backend, ring)

    def key_point(self, key: bytes) -> int:
        return ketama_hash(key)


class CarbonRouter(_RingRouter):
    """graphite carbon's ``ConsistentHashRing`` as carbon-relay-ng reproduces it.

    Each entry puts ``replicas`` points at MD5("('<host>', '<instance>'):<i>")[:2] (instance
    ``None`` when absent; the port is not hashed); ties sort by host, then instance."""

    scheme = "carbon"

    def __init__(self, slot_backend: Sequence[int], hosts: Sequence[str],
                 instances: Sequence[str | None], replicas: int = 100) -> None:
        entries: list[tuple[int, str, str, int]] = []
        for slot, (host, instance) in enumerate(zip(hosts, instances, strict=True)):
            node = f"('{host}', {'None' if instance is None else repr_py(instance)})"
            for i in range(replicas):
                position = carbon_position(f"{node}:{i}".encode())
                entries.append((position, host, instance or "", slot))
        entries.sort()
        super().__init__(slot_backend, [(position, slot) for position, _, _, slot in entries])

    def key_point(self, key: bytes) -> int:
        return carbon_position(key)


def repr_py(text: str) -> str:
    """Python's ``repr`` of a str, which carbon's tuple formatting puts in the ring keys."""
    return repr(text)


SCHEMES = ("jump", "shard_map", "ketama", "carbon")


def make_router(scheme: str, slot_backend: Sequence[int], addresses: Sequence[str],
                weights: Sequence[int], instances: Sequence[str | None]) -> Router:
    """Build the router of one group. ``addresses`` are ``host:port`` per slot."""
    if scheme == "jump":
        return JumpRouter(slot_backend)
    if scheme == "shard_map":
        return ShardMapRouter(slot_backend)
    if scheme == "ketama":
        return KetamaRouter(slot_backend, addresses, weights)
    if scheme == "carbon":
        hosts = [address.rsplit(":", 1)[0] for address in addresses]
        return CarbonRouter(slot_backend, hosts, instances)
    raise ValueError(f"unknown hash scheme {scheme!r}; known: {', '.join(SCHEMES)}")
