"""Where things live: Kafka's Java-compatible murmur2 partitioner, and invocation / awakeable ids that
carry their partition so any process can address them without a lookup."""

from __future__ import annotations

import functools
import hashlib

_M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as an unsigned 32-bit int."""
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=65_536)  # murmur2 in Python costs microseconds; keys recur
def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (Java) partitioner picks for `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=12).hexdigest()


def invocation_id(partition: int, *parts: str) -> str:
    """An invocation id on `partition`, derived from `parts` (the same parts, the same id)."""
    return f"inv-{partition}-{_digest(*parts)}"


def target_partition(key: str | None, seed: str, partitions: int) -> int:
    """Where an invocation of a keyed handler (by `key`) or of a service (by `seed`) lives."""
    return partition_for_key((key if key is not None else seed).encode(), partitions)


def partition_of(invocation_id: str) -> int:
    """The partition an invocation id names."""
    try:
        kind, partition, _ = invocation_id.split("-", 2)
        if kind != "inv":
            raise ValueError
        return int(partition)
    except ValueError:
        raise ValueError(f"not an invocation id: {invocation_id!r}") from None


def awakeable_id(invocation_id: str, seq: int) -> str:
    return f"awk-{invocation_id}-{seq}"


def parse_awakeable_id(awakeable_id: str) -> tuple[str, int]:
    """(invocation id, journal position) of an awakeable id."""
    if not awakeable_id.startswith("awk-inv-"):
        raise ValueError(f"not an awakeable id: {awakeable_id!r}")
    inv, _, seq = awakeable_id[4:].rpartition("-")
    partition_of(inv)
    return inv, int(seq)
