"""The held-out split: which documents are validation, from a stable 64-bit key each.

Every document has a split key that depends only on where it comes from, never on
where the data lives or on what else is in the source:

    one document per file (stdlib, text)   first 8 bytes of sha256(relative path)
    record kinds (jsonl, parquet, ...)     splitmix64(file key, record index)

A document is validation when `key < val_fraction * 2**64`. For one-document-per-file
kinds this is exactly `jaxlm.data.corpus.is_validation`, so `text:` over a copy of the
stdlib splits like `stdlib`. Keys are computed from names and counts alone, so choosing
a split never reads the data, and `jaxlm data tokenize` stores them next to the tokens
so a pre-tokenized copy splits exactly like its text.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

SPLITS = ("all", "train", "validation")

# splitmix64 constants (Steele, Lea, Flood 2014): a cheap, well-mixed, vectorisable
# bijection on 64-bit integers, so a record's key needs no per-record sha256.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def check_split(split: str, val_fraction: float) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def file_key(relative_name: str) -> int:
    """The key of a file (or of its only document): sha256 of its relative posix path."""
    digest = hashlib.sha256(relative_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def file_keys(relative_names: list[str]) -> np.ndarray:
    """`file_key` of each name, as uint64."""
    return np.fromiter((file_key(name) for name in relative_names), np.uint64, len(relative_names))


def record_keys(relative_name: str, count: int) -> np.ndarray:
    """Keys of records 0..count-1 of one file (uint64)."""
    z = np.uint64(file_key(relative_name)) + (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def is_validation(keys: np.ndarray, val_fraction: float) -> np.ndarray:
    """Boolean mask of the validation documents among `keys`."""
    # An integer key is below the float v*2**64 exactly when it is below its ceiling;
    # comparing integers avoids rounding the uint64 keys to float64.
    threshold = min(math.ceil(val_fraction * 2**64), 2**64 - 1)
    return np.asarray(keys, np.uint64) < np.uint64(threshold)


def kept_indices(keys: np.ndarray, split: str, val_fraction: float) -> np.ndarray | None:
    """Indices (int64, ascending) of the documents in `split`; None means all of them."""
    check_split(split, val_fraction)
    if split == "all":
        return None
    validation = is_validation(keys, val_fraction)
    return np.flatnonzero(validation if split == "validation" else ~validation).astype(np.int64)
