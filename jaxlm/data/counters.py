"""Named event counts of a data pipeline (documents read, empty, malformed, truncated...).

Stages run wherever Grain runs them: in reader threads, or in worker processes when
multiprocess prefetch is on. A counter object in a worker is a copy, so its counts
never reach the trainer by themselves. Instead the batching stage takes the counts
gathered since the previous batch (`take()`) and ships them inside the batch under
`COUNTS_KEY`; the trainer pops them and adds them up (`DataTotals`). Every count thus
arrives exactly once, from whichever process produced it.

Those counts are taken when a stage *reads* a document, and the packer reads ahead
(it fills `data.packing_bins` rows at a time, and Grain prefetches batches), so
`documents` runs ahead of training. What the steps actually consumed is counted from
the batches themselves as the loop takes them (`DataTotals.count_consumed`):
`consumed_documents` is the number of document starts (BOS at position 0 of a
segment) in the rows trained on, `consumed_pairs` the number of preference pairs.
A document cut into pieces counts once, with its first piece.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

import numpy as np

COUNTS_KEY = "_counts"


class DataCounters:
    """Thread-safe counts of named events, drained by `take()`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def take(self) -> dict[str, int]:
        """The counts since the last `take()`, and reset them."""
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
        return counts

    def __getstate__(self):  # a copy sent to a worker starts from zero
        return {}

    def __setstate__(self, state):
        self.__init__()


class DataTotals:
    """Running totals of the counts popped from batches; saved with checkpoints."""

    def __init__(self, totals: Mapping[str, int] | None = None):
        self.totals: Counter[str] = Counter(dict(totals or {}))

    def pop_from(self, batch: dict) -> dict:
        """Removes the counts from `batch` (returned without them) and adds them up."""
        counts = batch.pop(COUNTS_KEY, None)
        if counts:
            self.totals.update({k: int(v) for k, v in counts.items()})
        return batch

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.totals.items()))

    def count_consumed(self, batch: Mapping[str, np.ndarray], bos_id: int | None) -> None:
        """Adds what the step about to run on `batch` consumes (see the module docstring)."""
        segments = np.asarray(batch["segment_ids"])
        if segments.ndim == 3:  # [B, 2, T] preference pairs; filler pairs are all padding
            valid = (segments[:, 0] > 0).any(-1) & (segments[:, 1] > 0).any(-1)
            self.totals["consumed_pairs"] += int(valid.sum())
            return
        starts = (np.asarray(batch["positions"]) == 0) & (segments > 0)
        if bos_id is not None:  # a document's start, not the rest of a split one
            starts &= np.asarray(batch["tokens"]) == bos_id
        self.totals["consumed_documents"] += int(starts.sum())
