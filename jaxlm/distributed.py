"""Multi-host start-up through JAX's own distributed runtime.

One Python process per host (TPU VM worker, GPU node). On Cloud TPU pods and under
SLURM / Open MPI, `jax.distributed.initialize()` finds the coordinator by itself; on
other clusters pass it explicitly. Set JAXLM_COORDINATOR (host:port),
JAXLM_NUM_PROCESSES and JAXLM_PROCESS_ID, or JAXLM_DISTRIBUTED=1 for auto-detection.
`jaxlm launch -n N -- jaxlm train ...` sets them for N processes on this machine.
A single process needs none of this.

Failure detection. A process that dies (OOM kill, SIGKILL, lost host) leaves its
peers blocked in a collective that never completes; gloo and NCCL do not notice by
themselves. JAX's coordination service does: every process sends it heartbeats, and
when one stops for `heartbeat_timeout_seconds` the service tells all others, which
then abort (SIGABRT, exit status 134) instead of hanging. JAX's default is 100 s;
jaxlm uses HEARTBEAT_TIMEOUT_S (15 s; measured on 2 CPU processes: the survivor of
a SIGKILLed peer exits ~15 s later, against ~100 s by default). Heartbeats come from
a C++ thread that Python's GIL, a long compile or a slow step do not block, so a
short timeout does not misfire on slow steps. A peer that hangs while staying alive
keeps sending heartbeats: that is the step-time watchdog's job (jaxlm.watchdog).

At exit every process waits for the others in a shutdown barrier, for at most
`shutdown_timeout_seconds` (JAX: 300 s). The loop ends with a barrier of its own, so
healthy processes arrive together; SHUTDOWN_TIMEOUT_S (60 s) bounds the wait when one
does not. Both can be changed with JAXLM_HEARTBEAT_TIMEOUT_S / JAXLM_SHUTDOWN_TIMEOUT_S.

The coordinator (process 0) binds only the address the others dial, not JAX's default
of every interface ([::]:port): on one machine that is 127.0.0.1. Set
JAX_COORDINATOR_BIND_ADDRESS to override.
"""

from __future__ import annotations

import os

import jax

HEARTBEAT_TIMEOUT_S = 15
SHUTDOWN_TIMEOUT_S = 60

_initialized = False


def _env_seconds(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        seconds = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a whole number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{name}={value!r}: must be positive")
    return seconds


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
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", coordinator),
        heartbeat_timeout_seconds=_env_seconds("JAXLM_HEARTBEAT_TIMEOUT_S", HEARTBEAT_TIMEOUT_S),
        shutdown_timeout_seconds=_env_seconds("JAXLM_SHUTDOWN_TIMEOUT_S", SHUTDOWN_TIMEOUT_S),
    )
    _initialized = True
    return True
