"""Golden vectors: each hash scheme routes exactly like the relay it replaces.

The vectors are the originals' own test expectations (seed-systems reference §2-§5): an
operator swapping one of those relays for pystatsd must not move a single metric."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarders.statsd_relay.hashing import (
    CarbonRouter,
    JumpRouter,
    KetamaRouter,
    ShardMapRouter,
    carbon_position,
    fnv1a64,
    jump_hash,
    murmur3_32,
)

# jjneely/statsrelay jump_test.go: 9 "graphite0NN-g5" then 36 "graphite-dataNNN-g5" nodes
JJNEELY_NODES = [f"graphite0{n}-g5" for n in range(10, 19)] + [
    f"graphite-data0{n}-g5" for n in range(19, 55)]
CONNTRACK = b"5min.prod.dc06.graphite-web006-g6.kernel.net.netfilter.nf_conntrack_max"


@pytest.mark.parametrize(("key", "expected"), [
    (b"foobar", 0x85944171F73967E8),
    (b"changed", 0xDF38879AF614707B),
    (CONNTRACK, 0xDB7B58EF171EEE9F),
])
def test_fnv1a64_matches_jjneely_vectors(key: bytes, expected: int) -> None:
    assert fnv1a64(key) == expected


@pytest.mark.parametrize(("key", "node"), [
    (b"foobar", "graphite-data043-g5"),
    (b"suebob.foo.honey.i.shrunk.the.kids", "graphite-data048-g5"),
    (CONNTRACK, "graphite014-g5"),
])
def test_jump_owner_matches_jjneely_45_node_ring(key: bytes, node: str) -> None:
    assert len(JJNEELY_NODES) == 45
    router = JumpRouter(range(45))
    assert JJNEELY_NODES[router.owner(key)] == node


def test_jump_repeated_entry_is_weight_on_one_backend() -> None:
    # jjneely: host:port:INSTANCE lists one backend twice -> two buckets, same destination
    router = JumpRouter([0, 1, 1])
    owners = [router.owner(f"m{i}".encode()) for i in range(3000)]
    assert set(owners) == {0, 1}
    assert 0.25 < owners.count(0) / len(owners) < 0.42  # about 1/3 of the keys


@pytest.mark.parametrize(("key", "hashed", "shard"), [
    (b"apple", 2699884538, 2),
    (b"banana", 558421143, 3),
    (b"orange", 2279140812, 0),
    (b"lemon", 4183924513, 1),
])
def test_shard_map_matches_lyft_vectors(key: bytes, hashed: int, shard: int) -> None:
    assert murmur3_32(key) == hashed
    assert ShardMapRouter(range(4)).owner_slot(key) == shard


def test_shard_map_repeated_entries_share_one_backend() -> None:
    router = ShardMapRouter([0, 1, 0, 1])  # lyft: a repeated entry is the same backend
    assert router.owner(b"apple") == 0  # shard 2
    assert router.owner(b"banana") == 1  # shard 3


def test_ketama_matches_statsite_proxy_libketama() -> None:
    router = KetamaRouter(range(3), ["10.0.0.1:8125", "10.0.0.2:8125", "10.0.0.3:8125"],
                          [100, 100, 200])
    assert len(router.points) == 480
    names = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    owners = {key: names[router.owner(key.encode())] for key in
              ["foo.bar", "a.b.c", "servers.web1.cpu", "api.requests", "x"]}
    assert owners == {"foo.bar": "10.0.0.3", "a.b.c": "10.0.0.2",
                      "servers.web1.cpu": "10.0.0.3", "api.requests": "10.0.0.2",
                      "x": "10.0.0.2"}


def test_carbon_ring_matches_carbon_relay_ng_vectors() -> None:
    assert carbon_position(b"a.b.c.d") == 54437
    assert carbon_position(b"") == 54301
    router = CarbonRouter(range(5), ["10.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1",
                                     "10.0.0.2"], [None, "a", "b", "c", None], replicas=2)
    assert router.points == [6639, 7885, 10461, 24043, 24467, 35540, 46982, 52177, 53472,
                             54295]
    assert router.owner(b"a.b.c.d") == 4
    assert router.owner(b"a.b.c..d") == 1
    assert router.owner(b"collectd.bar.memory.free") == 3


@settings(max_examples=25, deadline=None)
@given(backends=st.integers(min_value=2, max_value=40), seed=st.integers(0, 2**32))
def test_jump_adding_a_backend_moves_about_one_nth_of_keys(backends: int, seed: int) -> None:
    keys = [f"svc{seed}.metric.{i}".encode() for i in range(4000)]
    before = [jump_hash(fnv1a64(k), backends) for k in keys]
    after = [jump_hash(fnv1a64(k), backends + 1) for k in keys]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    # every moved key goes to the new backend, and about 1/(n+1) of them move
    assert all(new == backends for _, new in moved)
    expected = len(keys) / (backends + 1)
    assert abs(len(moved) - expected) < 5 * expected ** 0.5 + 10


@pytest.mark.parametrize("router", [
    JumpRouter([0, 1, 2, 3]),
    ShardMapRouter([0, 1, 2, 3, 0, 1, 2, 3]),
    KetamaRouter([0, 1, 2, 3], [f"10.0.0.{i}:8125" for i in range(4)], [1, 1, 1, 1]),
    CarbonRouter([0, 1, 2, 3], [f"10.0.0.{i}" for i in range(4)], [None] * 4),
], ids=lambda r: r.scheme)
def test_fallback_moves_only_the_dead_backends_keys(router: JumpRouter) -> None:
    keys = [f"k{i}".encode() for i in range(2000)]
    owners = {k: router.owner(k) for k in keys}
    rerouted = {k: router.fallback(k, {2}) for k in keys}
    for key in keys:
        if owners[key] == 2:
            assert rerouted[key] in {0, 1, 3}
        else:
            assert rerouted[key] == owners[key]
    assert router.fallback(b"x", {0, 1, 2, 3}) is None
    # deterministic: the same dead set always gives the same answer
    assert all(router.fallback(k, {2}) == rerouted[k] for k in keys[:200])
