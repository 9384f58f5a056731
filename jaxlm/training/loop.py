"""The host loop: the one impure place that ties data, steps, metrics and checkpoints.

Order of a step: fetch the next host batch (timed as data wait) -> place it on the
mesh -> dispatch step n -> only then fetch step n-1's metrics. The device always has
a step queued, so the host never stalls it with a per-step sync.

A non-finite loss or gradient norm stops the run with `NonFiniteError` naming the
step; the step itself did not apply its update (jaxlm.training.steps), and no
checkpoint is written after it.

Whatever ends a run early (NonFiniteError, LossSpikeError, a failed save, a bad
input found mid-run), the save in flight is first waited for (at most
train.first_step_timeout_s; a second signal ends the wait at once), so no finished
step is left half-written, and the error then names the checkpoint really on disk.
A failed save is noticed at the first step after it failed, not at the next save.

`train()` is setup (jaxlm.training.setup: mesh, tokenizer, state, the run's Task,
restore), this loop, and finish (jaxlm.training.finish: last save, final eval, the
report). Whatever depends on what the run optimises (data, steps, eval summary,
metric names) is its Task's (jaxlm.training.tasks); the loop never asks which.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.analysis.metrics_file import elapsed_before
from jaxlm.checkpointing.manager import Checkpointer, CheckpointSaveError
from jaxlm.config import Config
from jaxlm.errors import RunStoppedError
from jaxlm.runtime.goodput import TimeLedger
from jaxlm.runtime.preemption import StopNow, StopRequest
from jaxlm.runtime.watchdog import StepWatchdog
from jaxlm.sharding import host_batch_to_global
from jaxlm.training import moe_losses
from jaxlm.training.finish import RunResult, finish, write_summary
from jaxlm.training.hosts import log
from jaxlm.training.progress import progress
from jaxlm.training.setup import Run, setup


class NonFiniteError(RunStoppedError):
    """Loss or gradients became NaN/Inf; the message names the step."""


class LossSpikeError(RunStoppedError):
    """optim.max_consecutive_spikes steps in a row were skipped as loss spikes."""


def train(cfg: Config, workdir: Path | str) -> RunResult:
    """Train (or continue) `cfg` in `workdir`; returns the final evaluation."""
    ledger = TimeLedger()  # where the wall time goes (jaxlm.runtime.goodput)
    run = setup(cfg, Path(workdir).absolute())
    long_budget = cfg.train.first_step_timeout_s
    # Signals and the watchdog are live from the first step to the end of the run.
    with (
        StopRequest() as stop,
        StepWatchdog(cfg.train.step_timeout_s > 0) as watchdog,
        _saves_settled_on_error(run.checkpointer, watchdog, long_budget),
    ):
        loop = _Loop(run, ledger, watchdog)
        loop.train_steps(stop)
        result = finish(run, loop)
    write_summary(run, loop, result)
    return result


class _Loop:
    """The steps of one run and their records; `state` is the current TrainState.

    Order of a step: fetch the next host batch (timed as data wait) -> place it on
    the mesh -> dispatch step n -> only then fetch step n-1's metrics (`report`).
    """

    def __init__(self, run: Run, ledger: TimeLedger, watchdog: StepWatchdog):
        cfg = run.cfg
        self.run, self.ledger, self.watchdog = run, ledger, watchdog
        self.state = run.state
        self.step_budget = cfg.train.step_timeout_s
        self.long_budget = cfg.train.first_step_timeout_s
        self.window: dict[str, list[float]] = {"loss": [], "time": [], "data": []}
        self.skips = _SkipCounter(cfg.optim.max_consecutive_spikes)
        self.train_losses: list[float] = []
        self.real_fractions: list[float] = []
        self.final_eval: dict[str, float] | None = None
        self.preempted = False
        self.bar = _progress_bar(run.total_steps, run.start_step, cfg.train.progress_bar)
        # Progress axes for comparing runs (`jaxlm compare`): tokens_seen (trained
        # positions, padding included; an eval record's `tokens` is its held-out count)
        # and model FLOPs (the MFU convention) trained so far, and wall time. A resumed
        # run's clock goes on from its last record at or before the resumed step, so
        # the time between a kill and the restart is not counted.
        self.elapsed_offset = elapsed_before(run.writer.path, run.start_step)

    def progress(self, step: int) -> dict[str, float]:
        tokens = step * self.run.tokens_per_step
        return {
            "tokens_seen": tokens,
            "flops": float(tokens * self.run.flops_per_token),
            "elapsed_s": self.elapsed_offset + time.perf_counter() - self.ledger.start,
        }

    def evaluate(self, step: int) -> dict[str, float]:
        """Eval on every held-out batch; writes the `eval` record and returns it."""
        run = self.run
        t0 = time.perf_counter()
        # Several CPU devices (processes, or one process's fake devices in tests): many
        # eval programs queued at once, each with a cross-device all-reduce, deadlock
        # now and then (~1 run in 4 on jax 0.10.2 with two processes: one device waits
        # in the all-reduce, the other in XLA's launch semaphore; with 8 fake devices
        # under load, 7 of 8 arrive and XLA aborts after 40 s — reproduced with the
        # distillation eval, whose programs are longer). So each is waited for.
        # Elsewhere (accelerators, one CPU device) they stay queued.
        serial = jax.device_count() > 1 and jax.default_backend() == "cpu"
        results = []
        with jax.set_mesh(run.mesh):
            for b in run.val_batches:
                results.append(run.steps.eval_step(self.state, host_batch_to_global(b, run.mesh)))
                if serial:
                    jax.block_until_ready(results[-1])
        out = run.task.summarize(jax.device_get(results))
        record = {**out, "eval_s": time.perf_counter() - t0, **self.progress(step)}
        run.writer.write(step, "eval", record)
        return out

    def evaluate_and_log(self, step: int) -> None:
        self.watchdog.expect(f"evaluation at step {step}", self.long_budget)
        with self.ledger.phase("eval"):
            summary = self.evaluate(step)
        log(f"step {step}: eval {self.run.task.eval_text(summary)}")
        if step:  # the step-0 eval of the starting model is no final one
            self.final_eval = summary

    def report(self, step: int, metrics, real_frac: float) -> None:
        """Step `step`'s metrics, fetched once the next step is queued."""
        run, cfg = self.run, self.run.cfg
        m = jax.device_get(metrics)
        step_time, data_wait = self.ledger.step_done()  # data wait of batches fetched meanwhile
        self.watchdog.expect(f"step {step + 2}", self.step_budget)
        _check_finite(step, m)
        self.skips.add(step, m)
        loss = float(m["loss"])
        self.train_losses.append(loss)
        self.window["loss"].append(loss)
        self.window["time"].append(step_time)
        self.window["data"].append(data_wait)
        tok_s = run.tokens_per_step / step_time
        mfu = run.flops_per_token * tok_s / run.peak_flops
        if self.bar is not None:
            self.bar.update(loss, tok_s, mfu)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == run.total_steps:
            # Means over the window: per step when train.log_every=1.
            mean_time = float(np.mean(self.window["time"]))
            record = {
                "loss": float(np.mean(self.window["loss"])),
                "grad_norm": float(m["grad_norm"]),
                "lr": float(m["lr"]),
                "step_time_s": mean_time,
                "data_wait_s": float(np.mean(self.window["data"])),
                "tokens_per_s": run.tokens_per_step / mean_time,
                "mfu": run.flops_per_token * run.tokens_per_step / mean_time / run.peak_flops,
                "real_token_fraction": real_frac,
                **self.skips.take_window(),  # steps not applied in this window
                **run.task.step_metrics(m),  # the objective's own (of the window's last step)
                **moe_losses.log_record(
                    run.cfg.model, m
                ),  # a MoE model's routing (of the last step)
                **{f"data_{k}": v for k, v in run.data_totals.as_dict().items()},
                **self.progress(step + 1),
            }
            run.writer.write(step + 1, "train", record)
            for v in self.window.values():
                v.clear()

    def save(self, done: int) -> None:
        run = self.run
        self.watchdog.expect(f"checkpoint save at step {done}", self.long_budget)
        with self.ledger.phase("checkpoint"):
            data_state = {
                "iterator": run.train_iter.get_state(),
                **run.fingerprint,  # documents_per_source, content_per_source, ...
                "counts": run.data_totals.as_dict(),
            }
            run.checkpointer.save(done, self.state, data_state, run.cfg.to_json())
            if self.preempted:  # the process may be killed soon: the save must be on disk
                run.checkpointer.wait()
        run.writer.write(done, "checkpoint", {"blocking_s": self.ledger.last_phase_s})
        self.watchdog.expect(f"step {done + 1}", self.step_budget)

    def train_steps(self, stop: StopRequest) -> None:
        """From the run's start step to its last (train.steps, or what train.epochs
        comes to), or to a preemption's save."""
        run, cfg = self.run, self.run.cfg
        total_steps = run.total_steps
        if cfg.train.eval_at_start and run.start_step == 0:
            # The starting model's held-out numbers (e.g. the base model's loss on the
            # SFT data), as the step-0 eval record.
            self.evaluate_and_log(0)
        self.ledger.loop_starts()
        first = f"step {run.start_step + 1} (the first of this run: compiles)"
        self.watchdog.expect(first, self.long_budget)
        pending = None
        for step in range(run.start_step, total_steps):
            with self.ledger.data_wait():
                host_batch = run.data_totals.pop_from(next(run.train_iter))
                run.data_totals.count_consumed(host_batch, run.tokenizer.bos_id)
                # Other "_" keys (e.g. preference pairs' "_where") are not model inputs.
                host_batch = {k: v for k, v in host_batch.items() if not k.startswith("_")}
            run.checkpointer.raise_if_failed()  # a failed save stops the run at once
            real_frac = float(np.mean(host_batch["segment_ids"] != 0))
            self.real_fractions.append(real_frac)
            with jax.set_mesh(run.mesh):
                batch = host_batch_to_global(host_batch, run.mesh)
                self.state, metrics = run.steps.train_step(self.state, batch)
            if pending is not None:
                self.report(*pending)
            pending = (step, metrics, real_frac)

            done = step + 1
            is_last = done == total_steps
            # Every process calls this once per step, in the same order (preemption.py).
            self.preempted = stop.reached(done) and not is_last
            evaluate = (cfg.train.eval_every and done % cfg.train.eval_every == 0) or is_last
            if evaluate and not self.preempted:  # preempted: save at once, skip this eval
                self.report(*pending)
                pending = None
                self.evaluate_and_log(done)
                self.watchdog.expect(f"step {done + 1}", self.step_budget)
            every = cfg.train.checkpoint_every
            if (every and done % every == 0) or is_last or self.preempted:
                if pending is not None:
                    self.report(*pending)
                    pending = None
                self.save(done)
            if self.preempted:
                _say_preempted(stop, done, run.checkpointer)
                break
        if pending is not None:
            self.report(*pending)
        if self.bar is not None:
            self.bar.close()


def _say_preempted(stop: StopRequest, done: int, checkpointer: Checkpointer) -> None:
    # Every process says so: each must have saved the same step.
    who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
    why = f"{stop.signal_name} received" if stop.signal_name else "preemption notice"
    print(
        f"{who}{why}: saved step {done} to {checkpointer.directory} and stopped; "
        "run the same command again to resume from there",
        flush=True,
    )


def _check_finite(step: int, m: dict[str, Any]) -> None:
    if int(m["finite"]):
        return
    raise NonFiniteError(
        f"non-finite loss, gradient or update at step {step + 1} (loss={float(m['loss'])}, "
        f"grad_norm={float(m['grad_norm'])}); the update was not applied; {{saved}}"
    )


class _SkipCounter:
    """Steps the train step skipped (no supervised token; loss spike), per log window.

    Stops the run once `max_in_a_row` consecutive steps were skipped as spikes: by
    then the loss has moved, not spiked, and skipping on would silently train on
    nothing (optax.apply_if_finite has the same need for a hard stop).
    """

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.window = {"skipped_empty": 0, "skipped_spike": 0}
        self.run = dict(self.window)
        self.spikes_in_a_row = 0

    def add(self, step: int, m: dict[str, Any]) -> None:
        for key in self.window:
            self.window[key] += int(m[key])
            self.run[key] += int(m[key])
        self.spikes_in_a_row = self.spikes_in_a_row + 1 if int(m["skipped_spike"]) else 0
        if self.max_in_a_row and self.spikes_in_a_row >= self.max_in_a_row:
            raise LossSpikeError(
                f"steps {step + 2 - self.spikes_in_a_row}..{step + 1} were all skipped as loss "
                f"spikes (the last: loss {float(m['loss']):.4f} vs moving average "
                f"{float(m['loss_ema']):.4f}; optim.max_consecutive_spikes="
                f"{self.max_in_a_row}); the loss level has changed, not spiked. Lower the "
                "learning rate or raise optim.spike_factor, then resume ({saved})"
            )

    def take_window(self) -> dict[str, int]:
        out, self.window = self.window, dict.fromkeys(self.window, 0)
        return out


@contextlib.contextmanager
def _saves_settled_on_error(checkpointer: Checkpointer, watchdog: StepWatchdog, budget: float):
    """On an error, wait for the save in flight, then let the error name the real
    last checkpoint. A second signal (StopNow) does not wait: it only says so."""
    try:
        yield
    except StopNow as stop_now:
        stop_now.unsaved_step = checkpointer.in_flight
        stop_now.saved = checkpointer.last_saved()
        raise
    except Exception as error:
        in_flight = checkpointer.in_flight
        if in_flight is not None:
            watchdog.expect(f"the save of step {in_flight} after an error", budget)
            try:
                checkpointer.wait(timeout=budget)
            except CheckpointSaveError as failed:  # said first; the run's own error ends it
                if jax.process_index() == 0:
                    print(f"jaxlm: warning: {failed}", file=sys.stderr, flush=True)
        if isinstance(error, RunStoppedError):
            error.saved = checkpointer.last_saved()
        raise


def _progress_bar(total: int, start: int, enabled: bool):
    if not enabled or jax.process_index() != 0:
        return None
    return progress(total, start)  # a bar on a terminal, periodic lines in a log file
