"""What a run's processes say and agree on: the leader's log, barriers, a max over hosts.

Each is a no-op beyond plain Python in a single-process run, so the loop and the
tasks call them unconditionally.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def log(msg: str) -> None:
    """Print once per run (process 0), flushed: the run's progress lines."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def allgather_max(value: int) -> int:
    """The largest `value` over processes (e.g. batch counts to equalise)."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))
