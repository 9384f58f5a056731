"""Shuffle seeds of the sources of a mixture, text and jsonl records alike.

Source 0 keeps the run's seed, so a single-source run shuffles exactly as it did
before mixtures existed; every other source gets an independent seed derived from
(seed, index), so two sources never share a permutation.
"""

from __future__ import annotations

import numpy as np


def source_seed(seed: int, index: int) -> int:
    """Independent shuffle seeds per source; source 0 keeps `seed` itself."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
