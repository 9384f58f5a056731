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

JAX's own reaction to a lost peer is a fatal C++ log line and an abort, hundreds of
characters of gRPC/glog text with no word on what to do. jaxlm hands the runtime
client a callback instead (`missed_heartbeat_callback`, which jax.distributed does
not expose, so it is added to the client that initialize creates): it writes one
`jaxlm: error:` line naming the lost process(es) and saying to rerun the command,
which resumes from the last checkpoint, then ends the process with the watchdog's
EXIT_CODE (75, "temporary failure, retry"). The callback runs on a runtime thread
while the main thread may be blocked in a collective, so it only calls os.write and
os._exit: no Python-level lock that the blocked thread could hold.

At exit every process waits for the others in a shutdown barrier, for at most
`shutdown_timeout_seconds` (JAX: 300 s). The loop ends with a barrier of its own, so
healthy processes arrive together; SHUTDOWN_TIMEOUT_S (60 s) bounds the wait when one
does not. Both can be changed with JAXLM_HEARTBEAT_TIMEOUT_S / JAXLM_SHUTDOWN_TIMEOUT_S.

The coordinator (process 0) binds only the address the others dial, not JAX's default
of every interface ([::]:port): on one machine that is 127.0.0.1. Set
JAX_COORDINATOR_BIND_ADDRESS to override.
"""

from __future__ import annotations

import contextlib
import os
import re

import jax

from jaxlm.watchdog import EXIT_CODE

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
    heartbeat_s = _env_seconds("JAXLM_HEARTBEAT_TIMEOUT_S", HEARTBEAT_TIMEOUT_S)
    with _peer_loss_reported(heartbeat_s):
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", coordinator),
            heartbeat_timeout_seconds=heartbeat_s,
            shutdown_timeout_seconds=_env_seconds("JAXLM_SHUTDOWN_TIMEOUT_S", SHUTDOWN_TIMEOUT_S),
        )
    _initialized = True
    return True


@contextlib.contextmanager
def _peer_loss_reported(heartbeat_s: int):
    """While jax.distributed.initialize runs, its runtime client gets jaxlm's
    peer-loss callback; with a JAX that creates it otherwise, JAX's abort stays."""
    from jax._src import distributed as jax_distributed

    runtime = getattr(jax_distributed, "_jax", None)
    create = getattr(runtime, "get_distributed_runtime_client", None)
    if create is None:
        yield
        return

    def with_callback(*args, **kwargs):
        kwargs.setdefault("missed_heartbeat_callback", _peer_loss_callback(heartbeat_s))
        return create(*args, **kwargs)

    runtime.get_distributed_runtime_client = with_callback
    try:
        yield
    finally:
        runtime.get_distributed_runtime_client = create


def _peer_loss_callback(heartbeat_s: int):
    def peer_lost(status=None, *_) -> None:
        line = f"jaxlm: error: {peer_loss_message(str(status or ''), heartbeat_s)}\n"
        os.write(2, line.encode("utf-8", "replace"))
        os._exit(EXIT_CODE)

    return peer_lost


def peer_loss_message(status: str, heartbeat_s: int) -> str:
    """One line from the runtime's error status: who was lost and what to do."""
    listed = re.search(r"stopped sending heartbeats\):\s*([\d,\s]+)", status)
    lost = re.findall(r"\d+", listed.group(1)) if listed else []
    if lost:
        plural = "es" if len(lost) > 1 else ""
        what = (
            f"lost process{plural} {', '.join(lost)} of this job: it stopped sending "
            f"heartbeats for {heartbeat_s}s (killed, crashed, or its host is gone)"
        )
    else:
        first = status.strip().splitlines()[0] if status.strip() else "no details"
        what = f"lost contact with another process of this job or its coordinator ({first})"
    return (
        f"{what}; this process stops too. Once every process can run, run the same command "
        "again (on every process) to resume from the last checkpoint"
    )
