"""Kafka's default partition for a key: murmur2, as the Java client computes it. Pure.

The same function as ``aiokafka.partitioner.murmur2`` (and Java's ``Utils.murmur2``), written to
take four bytes at a time: the relay computes it for every record it publishes.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF
_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` (seed 0x9747b28c), unsigned."""
    length = len(data)
    h = _SEED ^ length
    words = length >> 2
    unpack = _WORDS[words].unpack_from if words < len(_WORDS) else struct.Struct(f"<{words}I").unpack_from
    for k in unpack(data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        base = length & ~3
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition(key: bytes, partitions: int) -> int:
    """The index (among the topic's sorted partitions) Kafka's default partitioner picks."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
