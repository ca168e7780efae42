"""Which partition of the interactions topic a user's events land on.

The producer keys every message by its user id, and kafka-python's default partitioner puts
a keyed message on ``murmur2(key) & 0x7fffffff % n_partitions`` (the Java client's rule, so
any Kafka client agrees). A user therefore lives on exactly one partition, and the worker that
owns the partition owns the user's fast state. `partition_of` computes that partition without
a broker, e.g. to tell which worker holds a user, or which users move with a partition.

>>> user_key("u42")
b'u42'
>>> partition_of("u42", 4), partition_of("u42", 4) == partition_of("u42", 4)
(3, True)
"""

from __future__ import annotations

from collections.abc import Iterable

from fastslow.errors import ConfigError


def user_key(user_id: str) -> bytes:
    """The Kafka message key for a user: the id's UTF-8 bytes.

    >>> user_key("ü")
    b'\\xc3\\xbc'
    """
    return user_id.encode()


def partition_of(user_id: str, n_partitions: int) -> int:
    """The partition (0 .. n_partitions - 1) the default partitioner gives ``user_id``'s key.

    >>> [partition_of(u, 3) for u in ("a", "b", "c")]
    [1, 2, 1]
    """
    if n_partitions < 1:
        raise ConfigError("n_partitions", n_partitions, "an integer >= 1")
    from kafka.partitioner.default import murmur2  # kafka stays out of import time

    return (murmur2(user_key(user_id)) & 0x7FFFFFFF) % n_partitions


def users_by_partition(user_ids: Iterable[str], n_partitions: int) -> dict[int, list[str]]:
    """Group user ids by their partition (only partitions with users appear).

    >>> users_by_partition(["a", "b", "c"], 3)
    {1: ['a', 'c'], 2: ['b']}
    """
    groups: dict[int, list[str]] = {}
    for user in user_ids:
        groups.setdefault(partition_of(user, n_partitions), []).append(user)
    return groups
