"""What a set keeps of a member: a 64-bit hash of its bytes, the same in every process and on
every host.

A set counts distinct members, so it needs to tell members apart, not to keep them: a set
cell holds each member's hash (8 bytes in the compiled line cache's ``MemberSet``) instead of
the member's text (a ``str`` of ~50 bytes and its dict entry). The hash is MurmurHash3 x64 128
with seed 0, its first 64 bits as a signed integer: what ``mmh3.hash64(member)[0]`` returns
(mmh3 is a dependency already, for the relays' hash rings), and what the compiled module
(``pystatsd/_linecache.pyx``) computes in C without making an object; a test holds the two
equal on any bytes. Python's ``hash()`` would not do: it is seeded per process, and receive
workers and the hosts of the global tier must give one member one value.

**Counts are exact up to hash collisions.** Two distinct members count as one only if their
64-bit hashes are equal: for a set of n distinct members the chance that any two collide is
about n^2 / 2^65 (a million members: 2.7e-8; a billion: 0.027, and the count is then one
low). A client that chose members to collide on purpose could make its own set count low
(MurmurHash3 is not a cryptographic hash); it cannot make another series count wrong, and
the compiled table's probing is keyed per process, so chosen members do not slow it down.
"""

from __future__ import annotations

from mmh3 import hash64


def member_hash(member: bytes) -> int:
    """The 64-bit hash a set keeps of ``member`` (its bytes as they arrived), signed."""
    value: int = hash64(member)[0]  # the defaults: seed 0, x64, signed (fewer to parse)
    return value


def text_member_hash(member: str) -> int:
    """:func:`member_hash` of a decoded member: its UTF-8 bytes, which are the bytes it came
    as (the decoders take members as strict UTF-8); a lone surrogate (only from JSON) is kept
    as its own three bytes rather than refused."""
    return member_hash(member.encode("utf-8", "surrogatepass"))
