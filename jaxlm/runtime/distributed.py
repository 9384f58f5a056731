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
keeps sending heartbeats: that is the step-time watchdog's job (jaxlm.runtime.watchdog).

JAX's own report of a lost peer is hundreds of characters of gRPC/glog text ending in
an abort, with no word on what to do. So every process also runs a peer watch (a
daemon thread): once a second it bumps its own counter in the coordination service's
key-value store and reads everyone's. A peer whose counter has not moved for half
JAX's heartbeat timeout (less PEER_EARLY_S) gets one `jaxlm: error:` line naming
it and saying to rerun the command, which resumes from the last checkpoint; JAX then
ends the process as before (an abort, status 134). The watch never ends a process
itself: JAX's C++ heartbeats, which no Python lock can stall, stay the judge. A
process that exits normally says so first, and a callback into the runtime was not
an option: jaxlib cannot hand the error status of its missed-heartbeat callback to
Python (std::bad_cast).

At exit every process waits for the others in a shutdown barrier, for at most
`shutdown_timeout_seconds` (JAX: 300 s). The loop ends with a barrier of its own, so
healthy processes arrive together; SHUTDOWN_TIMEOUT_S (60 s) bounds the wait when one
does not. Both can be changed with JAXLM_HEARTBEAT_TIMEOUT_S / JAXLM_SHUTDOWN_TIMEOUT_S.

The coordinator (process 0) binds only the address the others dial, not JAX's default
of every interface ([::]:port): on one machine that is 127.0.0.1. Set
JAX_COORDINATOR_BIND_ADDRESS to override.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time

import jax
from jax._src.distributed import global_state

HEARTBEAT_TIMEOUT_S = 15
SHUTDOWN_TIMEOUT_S = 60
# The peer watch speaks after half the heartbeat timeout, less this: the service may
# declare a peer dead a heartbeat interval before a full timeout after its death (its
# last heartbeat can precede its last counter update), and the line must come first.
PEER_EARLY_S = 2

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
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", coordinator),
        heartbeat_timeout_seconds=heartbeat_s,
        shutdown_timeout_seconds=_env_seconds("JAXLM_SHUTDOWN_TIMEOUT_S", SHUTDOWN_TIMEOUT_S),
    )
    _initialized = True
    _start_peer_watch(max(2, heartbeat_s / 2 - PEER_EARLY_S))
    return True


def wait_for_all_processes(name: str, timeout_s: float = 600.0) -> None:
    """Wait until every process reaches `name`, through the coordination service.

    CPU collectives (gloo) give up after a fixed 30 s when one process reaches a
    collective that much later than another, whatever XLA's timeout flags say, and
    compiling the first step can differ by more than that between processes on a
    loaded host. Meeting here after compiling, with a generous timeout, leaves the
    collectives only the step's own skew. No-op in a single-process run.
    """
    client = global_state.client
    if client is None or jax.process_count() < 2:
        return
    client.wait_at_barrier(f"jaxlm/{name}", int(timeout_s * 1000))


def peer_loss_message(peer: int, silent_s: float) -> str:
    """The one line a process prints when peer `peer` has gone silent."""
    return (
        f"process {peer} of this job has given no sign of life for {silent_s:.0f}s: it was "
        "killed, crashed or lost its host, and the job cannot go on without it (the "
        "distributed runtime ends this process next). Once every process can run, run the "
        "same command again on every process to resume from the last checkpoint"
    )


def _start_peer_watch(silent_s: float) -> None:
    client, count = global_state.client, jax.process_count()
    if client is None or count < 2:
        return
    watch = _PeerWatch(client, jax.process_index(), count, silent_s)
    thread = threading.Thread(target=watch.run, name="jaxlm-peer-watch", daemon=True)
    thread.start()
    atexit.register(watch.stop, thread)  # runs before JAX's own shutdown (registered earlier)


class _PeerWatch:
    """Counters in the coordination service: mine goes up, a lost peer's stops."""

    PREFIX = "jaxlm/alive/"
    EXITED = "exited"

    def __init__(self, client, me: int, count: int, silent_s: float):
        self.client, self.me, self.silent_s = client, me, silent_s
        self.peers = [i for i in range(count) if i != me]
        self._stopping = threading.Event()

    def stop(self, thread: threading.Thread, timeout_s: float = 5.0) -> None:
        """At exit: end the watch, then say this process exited on purpose.

        The thread must be out of the coordination client before the interpreter
        finalises: a daemon thread that comes back from C++ then is ended by a forced
        unwind that the binding's catch-all swallows, and the process aborts
        ("FATAL: exception not rethrown", seen once in 8 loaded two-process runs,
        after the run itself had finished).
        """
        self._stopping.set()
        thread.join(timeout_s)
        self.say_exited()

    def say_exited(self) -> None:
        with contextlib.suppress(Exception):  # the runtime may be gone already
            self.client.key_value_set(f"{self.PREFIX}{self.me}", self.EXITED, True)

    def run(self) -> None:
        # A peer's last value and when it last changed. Only a peer's silence counts:
        # when this thread itself was held up, the peer's value has moved meanwhile.
        seen = {peer: ("", time.monotonic()) for peer in self.peers}
        beat = 0
        while seen and not self._stopping.is_set():
            beat += 1
            try:
                self.client.key_value_set(f"{self.PREFIX}{self.me}", str(beat), True)
                values = {
                    key.rsplit("/", 1)[-1]: value
                    for key, value in self.client.key_value_dir_get(self.PREFIX)
                }
            except Exception:  # the coordinator itself is gone: JAX's own error follows
                return
            now = time.monotonic()
            for peer, (last, since) in list(seen.items()):
                value = values.get(str(peer), "")
                if value == self.EXITED:
                    del seen[peer]
                elif value != last:
                    seen[peer] = (value, now)
                elif now - since > self.silent_s:
                    del seen[peer]
                    message = peer_loss_message(peer, now - since)
                    print(f"jaxlm: error: {message}", file=sys.stderr, flush=True)
            self._stopping.wait(1.0)
