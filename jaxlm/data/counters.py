"""Named event counts of a data pipeline (documents read, empty, malformed, truncated...).

Stages run wherever Grain runs them: in reader threads, or in worker processes when
multiprocess prefetch is on. A counter object in a worker is a copy, so its counts
never reach the trainer by themselves. Instead the batching stage takes the counts
gathered since the previous batch (`take()`) and ships them inside the batch under
`COUNTS_KEY`; the trainer pops them and adds them up (`DataTotals`). Every count thus
arrives exactly once, from whichever process produced it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

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
