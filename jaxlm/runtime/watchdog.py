"""Step-time watchdog: end a run whose step stopped making progress.

A peer that hangs while staying alive (a stuck data reader, a wedged accelerator, a
deadlocked collective) keeps sending heartbeats, so the distributed runtime never
notices, and every process waits forever. With `train.step_timeout_s` > 0 a daemon
thread expects the loop to report progress within a budget; when it does not, it
prints what it was waiting for and for how long, dumps every thread's Python stack
(where the loop is stuck), and ends the process with EXIT_CODE through os._exit:
the main thread is blocked, so an exception could never be delivered to it.

Budgets: `train.step_timeout_s` per step; `train.first_step_timeout_s` for the first
step of a run (it traces and compiles) and for evaluations and checkpoint saves,
which are not steps and take longer. In a multi-process job every process runs its
own watchdog: the hung one and the peers waiting on it all exit.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable

# EX_TEMPFAIL from sysexits.h: "temporary failure, retry". A job scheduler can restart
# on this code from the last checkpoint and treat other non-zero codes as real errors.
EXIT_CODE = 75


class StepWatchdog:
    """`expect(what, seconds)` arms it; the next `expect` re-arms, leaving the `with` ends it.

    Disabled (`enabled=False`, i.e. train.step_timeout_s = 0) it starts no thread and
    `expect` does nothing.
    """

    def __init__(
        self, enabled: bool = True, *, exit: Callable[[int], None] = os._exit, stream=None
    ):
        self._exit = exit
        self._stream = stream
        self._cond = threading.Condition()
        self._what = ""
        self._budget = 0.0
        self._since = 0.0
        self._stopped = False
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._watch, name="jaxlm-watchdog", daemon=True)
            self._thread.start()

    def __enter__(self) -> StepWatchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def expect(self, what: str, seconds: float) -> None:
        """From now, `what` (e.g. "step 12") must finish within `seconds`."""
        if self._thread is None:
            return
        with self._cond:
            self._what, self._budget, self._since = what, seconds, time.monotonic()
            self._cond.notify()

    def stop(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()
        self._thread = None

    def _watch(self) -> None:
        # The deadline is re-read after every wake-up under the lock, so an `expect`
        # that arrived meanwhile always moves it before it is judged.
        with self._cond:
            while not self._stopped:
                if not self._what:
                    self._cond.wait()
                    continue
                remaining = self._since + self._budget - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._fire(time.monotonic() - self._since)
                return

    def _fire(self, waited: float) -> None:
        stream = self._stream or sys.stderr
        sys.stdout.flush()
        print(
            f"jaxlm: watchdog: {self._what} has not finished after {waited:.1f}s (budget "
            f"{self._budget:g}s); the run is stuck. Thread stacks follow. Exiting with "
            f"code {EXIT_CODE} so that the job can be restarted from its last checkpoint.",
            file=stream,
            flush=True,
        )
        # A stream without a file descriptor (a test's StringIO) cannot take the stacks.
        with contextlib.suppress(AttributeError, ValueError, OSError):
            faulthandler.dump_traceback(file=stream, all_threads=True)
        stream.flush()
        self._exit(EXIT_CODE)
