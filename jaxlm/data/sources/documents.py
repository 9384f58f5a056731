"""Random-access collections of documents, and the two ways sources combine them.

Every source kind opens to a `DocumentSource`: `len()`, `source[i]` (a `str`, an int32
token array, or None for a record skipped as malformed) and `split_keys()` (one
uint64 per document, see split.py). Files combine with `ConcatDocuments`; a split
keeps some of them with `SelectedDocuments`. All of them hold only names, sizes and
index arrays, never open files, so they pickle cheaply into Grain worker processes.
"""

from __future__ import annotations

import bisect
from typing import Any, Protocol

import numpy as np


class DocumentSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def split_keys(self) -> np.ndarray: ...


def is_blank_text(text: str) -> bool:
    """Whether a text document has nothing to learn from (empty or only whitespace)."""
    return not text.strip()


class ConcatDocuments:
    """The documents of several parts (e.g. files), one after the other."""

    def __init__(self, parts: list[DocumentSource]):
        self.parts = list(parts)
        self._ends = np.cumsum([len(part) for part in self.parts]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> Any:
        index = _check_index(index, len(self))
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self.parts[part][index - start]

    def split_keys(self) -> np.ndarray:
        if not self.parts:
            return np.zeros(0, np.uint64)
        return np.concatenate([part.split_keys() for part in self.parts])


class SelectedDocuments:
    """Documents `indices[0], indices[1], ...` of `parent` (e.g. one split of it)."""

    def __init__(self, parent: DocumentSource, indices: np.ndarray):
        self.parent = parent
        # int32 halves what every worker process receives when it fits.
        dtype = np.int32 if len(parent) < 2**31 else np.int64
        self._indices = np.asarray(indices).astype(dtype)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Any:
        return self.parent[int(self._indices[_check_index(index, len(self))])]

    def split_keys(self) -> np.ndarray:
        return self.parent.split_keys()[self._indices]


def _check_index(index: int, length: int) -> int:
    index = int(index)
    if not 0 <= index < length:
        raise IndexError(f"document index {index} out of range [0, {length})")
    return index
