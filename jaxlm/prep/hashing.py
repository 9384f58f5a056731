"""64-bit hashing of strings and integer arrays, stable across processes and machines.

Python's `hash(str)` is salted per process, so deduplication built on it could keep
different documents on different runs. These are fixed functions instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: the SplitMix64 step


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on a uint64 array: a bijection that scatters nearby inputs."""
    x = np.asarray(x, np.uint64)
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def random_uint64(seed: int, count: int) -> np.ndarray:
    """`count` pseudo-random uint64s determined by `seed` alone (the SplitMix64 stream).

    Written out rather than drawn from numpy.random, whose streams are not promised
    to stay the same across numpy versions.
    """
    state = np.uint64(seed % 2**64) + GOLDEN * np.arange(1, count + 1, dtype=np.uint64)
    return splitmix64(state)


def string_hashes(strings: Sequence[str]) -> np.ndarray:
    """A uint64 hash of each string (BLAKE2b, 8 bytes), hashing each distinct one once."""
    distinct: dict[str, int] = {}
    ids = [distinct.setdefault(s, len(distinct)) for s in strings]
    table = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
            for s in distinct
        ),
        np.uint64,
        len(distinct),
    )
    return table[np.asarray(ids, np.int64)]
