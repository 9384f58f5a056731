"""Where a run's wall time went: productive steps against everything else (goodput).

The loop calls `lap(category)` at the end of each piece of work, so every second since
the ledger started belongs to exactly one category and the parts add up to the wall
time (what is left, `unaccounted_s`, is the time since the last lap):

    startup      config, tokenizer, model init, restore: before the first step
    compile      the first step of this run: tracing and XLA compilation, plus the
                 step itself (not separable without compiling ahead of time)
    step         productive training steps (dispatch and waiting for the device)
    data_wait    the host blocked on the input pipeline for the next batch
    eval         evaluations (their first one also compiles the eval step)
    checkpoint   saves: the blocking part of async saves, and waiting for them to end
    finish       end-of-run work: loss plot, gzip baseline, sample generation

A step's interval (`step_done`) is the time since the previous step finished or a
non-step phase (eval, checkpoint) ended, with the data wait inside it; with the loop's
asynchronous dispatch that is the device time of one step in steady state. Data wait
is counted as lost even though the device may still have been busy with the queued
step during part of it: the host cannot tell.
"""

from __future__ import annotations

import contextlib
import time

CATEGORIES = ("startup", "compile", "step", "data_wait", "eval", "checkpoint", "finish")

# Summary keys: the existing names for productive step time and checkpoint blocking.
_SUMMARY_NAMES = {"step": "productive_step_s", "checkpoint": "checkpoint_blocking_s"}


class TimeLedger:
    """Wall time split into CATEGORIES by laps; see the module docstring."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self.start = self._last = self._interval_start = clock()
        self._interval_data = 0.0
        self.totals = dict.fromkeys(CATEGORIES, 0.0)
        self.steps = 0
        self.last_phase_s = 0.0  # length of the latest `phase`

    def lap(self, category: str) -> float:
        """Attributes the time since the previous lap to `category`; returns it."""
        now = self._clock()
        elapsed, self._last = now - self._last, now
        self.totals[category] += elapsed
        if category == "data_wait":
            self._interval_data += elapsed
        return elapsed

    def loop_starts(self) -> None:
        """Books everything so far as startup; the first step's interval starts now."""
        self.lap("startup")
        self._interval_start, self._interval_data = self._last, 0.0

    def _work(self) -> str:
        """The loop's own work (dispatch, waiting for the device): compile until a step ends."""
        return "compile" if self.steps == 0 else "step"

    @contextlib.contextmanager
    def data_wait(self):
        """Times fetching the next batch; the loop's work before it is booked first."""
        self.lap(self._work())
        try:
            yield
        finally:
            self.lap("data_wait")

    def step_done(self) -> tuple[float, float]:
        """A step finished: (its interval, the data wait within it), both in seconds.

        The first step of the run is booked as compile time, later ones as steps.
        """
        self.lap(self._work())
        self.steps += 1
        interval = self._last - self._interval_start
        data = self._interval_data
        self._interval_start, self._interval_data = self._last, 0.0
        return interval, data

    @contextlib.contextmanager
    def phase(self, category: str):
        """Times a non-step phase; the next step's interval starts when it ends."""
        self.lap(self._work())  # the loop's bookkeeping just before
        try:
            yield
        finally:
            self.last_phase_s = self.lap(category)
            self._interval_start, self._interval_data = self._last, 0.0

    def summary(self) -> dict[str, float]:
        """Seconds per category, `wall_s`, `unaccounted_s` and `goodput` (step / wall)."""
        wall = self._clock() - self.start
        out = {_SUMMARY_NAMES.get(k, f"{k}_s"): v for k, v in self.totals.items()}
        out["unaccounted_s"] = wall - sum(self.totals.values())
        out["wall_s"] = wall
        out["goodput"] = self.totals["step"] / wall if wall > 0 else 0.0
        return out


def format_summary(summary: dict[str, float]) -> str:
    """Two lines for a terminal: wall time and goodput, then where the rest went."""
    if not summary:
        return ""
    wall = summary["wall_s"]
    parts = [
        ("steps", "productive_step_s"),
        ("compile", "compile_s"),
        ("startup", "startup_s"),
        ("data wait", "data_wait_s"),
        ("eval", "eval_s"),
        ("checkpoint", "checkpoint_blocking_s"),
        ("finish", "finish_s"),
        ("other", "unaccounted_s"),
    ]
    detail = ", ".join(f"{name} {summary[key]:.1f}s" for name, key in parts)
    goodput = summary["goodput"]
    return f"time: {wall:.1f}s wall, goodput {goodput:.0%} (productive steps)\n  {detail}"
