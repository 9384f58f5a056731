"""Multi-host start-up through JAX's own distributed runtime.

One Python process per host (TPU VM worker, GPU node). On Cloud TPU pods and under
SLURM / Open MPI, `jax.distributed.initialize()` finds the coordinator by itself; on
other clusters pass it explicitly. Set JAXLM_COORDINATOR (host:port),
JAXLM_NUM_PROCESSES and JAXLM_PROCESS_ID, or JAXLM_DISTRIBUTED=1 for auto-detection.
A single process needs none of this.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def maybe_initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Initialise the multi-controller runtime if asked to; returns whether it did."""
    global _initialized
    if _initialized:
        return True
    coordinator = coordinator or os.environ.get("JAXLM_COORDINATOR")
    if num_processes is None and "JAXLM_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAXLM_NUM_PROCESSES"])
    if process_id is None and "JAXLM_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAXLM_PROCESS_ID"])
    auto = os.environ.get("JAXLM_DISTRIBUTED", "") == "1"
    if coordinator is None and not auto:
        return False
    # CPU collectives across processes need gloo (tests run several CPU processes);
    # the flag only affects the CPU client. No backend may be touched before
    # initialize(), so this cannot ask which backend will be used.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    _initialized = True
    return True
