"""Exact and near-duplicate detection that keeps the first occurrence, in one pass.

Exact: a 128-bit BLAKE2b digest of the (normalised) text; a document whose digest
was seen is a duplicate of the document first seen with it.

Near: MinHash signatures (jaxlm.prep.minhash) indexed by LSH banding. A signature
of `bands * rows` values is cut into `bands` bands of `rows` values; documents that
agree on a whole band land in the same bucket and become candidates, which happens
with probability 1 - (1 - J^rows)^bands for Jaccard similarity J (the S-curve; its
midpoint is about (1/bands)^(1/rows)). A bucket collision alone proves nothing, so
each candidate is verified: the document is a near duplicate only if the estimated
Jaccard with some candidate is >= `threshold`.

Only kept documents enter the index. A document is therefore dropped only for
resembling a document that is in the output, and the report can name it; chains
(A ~ B ~ C with A and C dissimilar, B dropped) keep C rather than losing it for
resembling something that is itself gone.
"""

from __future__ import annotations

import hashlib

import numpy as np

from jaxlm.prep.minhash import estimated_jaccard


class ExactDuplicates:
    """Remembers the digest of every text it admits and who had it first."""

    def __init__(self):
        self._first: dict[bytes, str] = {}

    def check(self, text: str) -> str | None:
        """The source of an earlier identical text, or None (not seen before)."""
        return self._first.get(_digest(text))

    def add(self, text: str, source: str) -> None:
        self._first.setdefault(_digest(text), source)


def _digest(text: str) -> bytes:
    # surrogatepass: normalisation replaces lone surrogates, but this class must not
    # crash on text that skipped normalisation.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def lsh_midpoint(bands: int, rows: int) -> float:
    """The similarity at which a pair becomes a candidate about half the time."""
    return (1.0 / bands) ** (1.0 / rows)


class NearDuplicateIndex:
    """LSH buckets over the signatures of kept documents, with verified matches."""

    def __init__(self, *, num_perm: int, bands: int, threshold: float):
        if bands < 1 or num_perm % bands:
            raise ValueError(f"bands ({bands}) must divide num_perm ({num_perm})")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.threshold = threshold
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self._signatures = np.empty((1024, num_perm), np.uint32)  # grows by doubling
        self._sources: list[str] = []

    def __len__(self) -> int:
        return len(self._sources)

    def _band_keys(self, signature: np.ndarray) -> list[bytes]:
        return [band.tobytes() for band in signature.reshape(self.bands, self.rows)]

    def check(self, signature: np.ndarray) -> tuple[str, float] | None:
        """(source, estimated Jaccard) of the most similar kept document at or above the
        threshold (the earliest one on ties), or None."""
        candidates: set[int] = set()
        for bucket, key in zip(self._buckets, self._band_keys(signature), strict=True):
            candidates.update(bucket.get(key, ()))
        if not candidates:
            return None
        indices = np.fromiter(sorted(candidates), np.int64, len(candidates))
        similarity = estimated_jaccard(signature, self._signatures[indices])
        best = int(np.argmax(similarity))  # argmax takes the first, i.e. earliest, maximum
        # Compare whole counts of equal values, with slack for float rounding: 0.07 * 100
        # is 7.000000000000001 in floating point, yet 7 matches of 100 must pass.
        matches = round(similarity[best] * self.num_perm)
        if matches < self.threshold * self.num_perm - 1e-9:
            return None
        return self._sources[indices[best]], float(similarity[best])

    def add(self, signature: np.ndarray, source: str) -> None:
        index = len(self._sources)
        if index == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.empty_like(self._signatures)])
        self._signatures[index] = signature
        self._sources.append(source)
        for bucket, key in zip(self._buckets, self._band_keys(signature), strict=True):
            bucket.setdefault(key, []).append(index)
