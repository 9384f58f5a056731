"""Stop a run cleanly on SIGTERM or SIGINT: finish the step, save a checkpoint, exit 0.

Schedulers announce preemption with SIGTERM and allow a grace period (Kubernetes:
30 s, GCE spot VMs: 30 s, SLURM: configurable) before SIGKILL; Ctrl-C sends SIGINT.
Either way the loop finishes the step it is on, saves (the normal checkpoint path)
and waits for the save, and the run returns with `preempted=True`; the CLI exits 0
and the same command resumes at that step and data position.

One process: Python handlers set a flag; `reached(step)` reads it.

Several processes: all must save the SAME step, yet the signal may reach only one of
them (a single preempted host) and at any point of its step. jaxlm uses JAX's
preemption sync manager, which `jax.distributed.initialize` starts in every process
(it is what Orbax's `CheckpointManager.reached_preemption` calls):

- it installs its own SIGTERM handler; the process that gets the signal tells the
  coordination service, which tells every process;
- in the background they agree on a sync step: one past the largest step any of them
  has reached, so no process has passed it yet;
- `multihost_utils.reached_preemption_sync_point(step)` returns True at that step in
  every process, and every process saves it.

Until a notice arrives the per-step call is a local check: no collective and no
host-device sync. The alternative, an allgather of a "stop requested" flag every
step, is a blocking cross-process collective that would also stall the loop's
asynchronous dispatch (the host waits for step n before dispatching n+1).

SIGINT is not part of JAX's protocol, so under several processes the SIGINT handler
re-sends SIGTERM to its own process and Ctrl-C takes the same path. A second SIGINT
aborts at once with StopNow, a KeyboardInterrupt (no save).

Signals while something blocks. The handlers only set a flag, so the loop must reach
a point that reads it: nothing in a run may block without end. The metrics writer
writes synchronously (no queue to a writer thread that may have died), a failed
save is raised at the next step, and the waits for a save poll in short slices, so
the handlers run during them. The first signal during a save still waits for that
save (it is the checkpoint the signal asks for); in one process a second signal,
SIGTERM or SIGINT, raises StopNow from wherever the main thread is, a save stuck on
a hung filesystem included: the run ends at once, saying which step was not saved
and which checkpoint a rerun resumes from; `jaxlm train` exits 128 + the signal.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils


class StopNow(KeyboardInterrupt):
    """A second signal: stop at once, without waiting for any save."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.unsaved_step: int | None = None  # the save cut short, if one was in flight
        self.saved = "no checkpoint yet"  # filled in by the loop

    @property
    def exit_status(self) -> int:
        return 128 + signal.Signals[self.signal_name].value

    def __str__(self) -> str:
        cut = "" if self.unsaved_step is None else f"step {self.unsaved_step} is not saved; "
        return (
            f"a second {self.signal_name} stopped the run at once: {cut}{self.saved}; run the "
            "same command again to resume from there"
        )


class StopRequest:
    """Watches for SIGTERM / SIGINT during a run; use as a context manager."""

    def __init__(self):
        self.signal_name = ""  # the signal this process received, if any
        self._multi = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only lets the main thread handle signals
        self._multi = jax.process_count() > 1
        if self._multi:
            if not jax.config.jax_enable_preemption_service:
                return self  # JAX's SIGTERM handler is off: signals keep their defaults
            # SIGTERM stays with JAX's handler (installed by jax.distributed.initialize).
            self._install(signal.SIGINT, self._sigint_to_sigterm)
        else:
            self._install(signal.SIGTERM, self._set_flag)
            self._install(signal.SIGINT, self._set_flag)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def reached(self, step: int) -> bool:
        """Whether to save `step` and stop. Every process calls this once per step."""
        if self._multi:
            if not jax.config.jax_enable_preemption_service:
                return False
            return multihost_utils.reached_preemption_sync_point(step)
        return bool(self.signal_name)

    def _install(self, signum: int, handler) -> None:
        self._previous[signum] = signal.signal(signum, handler)

    # Handlers run in the main thread between bytecodes, possibly in the middle of a
    # print: they only set state (printing here could raise a reentrant-call error).
    def _set_flag(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name:
            raise StopNow(name)  # the second signal: stop now, without saving
        self.signal_name = name

    def _sigint_to_sigterm(self, signum, frame) -> None:
        if self.signal_name:
            raise StopNow("SIGINT")
        self.signal_name = "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)
