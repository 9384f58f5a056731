"""The host loop: the one impure place that ties data, steps, metrics and checkpoints.

Order of a step: fetch the next host batch (timed as data wait) -> place it on the
mesh -> dispatch step n -> only then fetch step n-1's metrics. The device always has
a step queued, so the host never stalls it with a per-step sync.

A non-finite loss or gradient norm stops the run with `NonFiniteError` naming the
step; the step itself did not apply its update (steps.py), and no checkpoint is
written after it.

Whatever ends a run early (NonFiniteError, LossSpikeError, a failed save, a bad
input found mid-run), the save in flight is first waited for (at most
train.first_step_timeout_s; a second signal ends the wait at once), so no finished
step is left half-written, and the error then names the checkpoint really on disk.
A failed save is noticed at the first step after it failed, not at the next save.

The workdir's config.json (read by `jaxlm compare` and `scaling-fit`) is written
only once the run is accepted, after the resume checks: a refused resume leaves the
workdir as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.analysis.plotting import plot_loss_curves
from jaxlm.checkpointing.manager import (
    Checkpointer,
    CheckpointSaveError,
    abstract_like,
    from_jsonable,
)
from jaxlm.config import Config
from jaxlm.data import posttrain_inputs, run_inputs
from jaxlm.data.counters import DataTotals
from jaxlm.errors import InputError, RunStoppedError
from jaxlm.inference.decode import Generator
from jaxlm.models.flops import device_peak_flops, flops_per_token, measure_cpu_matmul_flops
from jaxlm.runtime import compilation_cache, distributed
from jaxlm.runtime.goodput import TimeLedger
from jaxlm.runtime.preemption import StopNow, StopRequest
from jaxlm.runtime.watchdog import StepWatchdog
from jaxlm.sharding import host_batch_to_global, training_mesh
from jaxlm.training.metrics import MetricsWriter, gzip_bits_per_byte
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.reference_logps import reference_table
from jaxlm.training.setup import initial_state, needs_reference
from jaxlm.training.tasks.next_token import build_objective


class NonFiniteError(RunStoppedError):
    """Loss or gradients became NaN/Inf; the message names the step."""


class LossSpikeError(RunStoppedError):
    """optim.max_consecutive_spikes steps in a row were skipped as loss spikes."""


@dataclasses.dataclass
class RunResult:
    """What a finished run produced, for the CLI to print and tests to check."""

    workdir: Path
    steps: int
    final_eval: dict[str, float]
    artefacts: dict[str, Path]
    gzip_bits_per_byte: float = float("nan")
    prompt: str = ""
    completion: str = ""
    wall_seconds: float = 0.0
    train_losses: list[float] = dataclasses.field(default_factory=list)
    preempted: bool = False  # stopped by SIGTERM/SIGINT after saving `steps`
    timing: dict[str, float] = dataclasses.field(default_factory=dict)  # goodput.py summary


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _allgather_max(value: int) -> int:
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


# ------------------------------------------------------------------------- helpers


def _eval_text(ev: dict[str, float]) -> str:
    if "accuracy" in ev:
        return f"loss {ev['loss']:.4f}, preference accuracy {ev['accuracy']:.4f}"
    return f"loss {ev['loss']:.4f}, {ev['bits_per_byte']:.4f} bits/byte"


def _eval_batches(cfg: Config, tokenizer, batch_size: int, **extra) -> list[dict[str, np.ndarray]]:
    """Held-out batches of this process; every process gets the same number."""
    where = (jax.process_index(), jax.process_count())
    if cfg.data.format == "text":
        return run_inputs.eval_batches(cfg, tokenizer, *where, _allgather_max)
    batches = posttrain_inputs.posttrain_eval_batches(cfg, tokenizer, *where, batch_size, **extra)
    if cfg.data.format == "chat":
        return run_inputs.equalize_batch_count(batches, _allgather_max, cfg, tokenizer.pad_id)
    count = _allgather_max(len(batches))
    if count == 0:
        raise InputError(f"{cfg.data.eval_sources or cfg.data.sources}: no held-out pairs")
    filler = posttrain_inputs.empty_pairs(
        batch_size, cfg.data.seq_len, tokenizer.pad_id, ref_logps="reference_logps" in extra
    )
    return batches + [filler] * (count - len(batches))


def _peak_flops_total(cfg: Config) -> tuple[float, str]:
    """Peak FLOP/s of all devices together, and where the figure came from."""
    n = jax.device_count()
    if cfg.train.peak_flops > 0:
        return cfg.train.peak_flops * n, "train.peak_flops"
    peak = device_peak_flops()
    if peak:
        return peak * n, f"{jax.devices()[0].device_kind} spec"
    if jax.default_backend() == "cpu":
        # Fake CPU devices share the same cores: the machine's peak is what counts.
        return measure_cpu_matmul_flops(), "measured CPU fp32 matmul"
    return float("nan"), "unknown"


def _check_finite(step: int, m: dict[str, Any]) -> None:
    if int(m["finite"]):
        return
    raise NonFiniteError(
        f"non-finite loss, gradient or update at step {step + 1} (loss={float(m['loss'])}, "
        f"grad_norm={float(m['grad_norm'])}); the update was not applied; {{saved}}"
    )


_PREFERENCE_METRICS = (
    "reward_accuracy",
    "margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_logp",
    "rejected_logp",
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


def _progress(total: int, start: int, enabled: bool):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)


# ---------------------------------------------------------------------------- loop


def train(cfg: Config, workdir: Path | str) -> RunResult:
    """Pretrain (or continue) `cfg` in `workdir`; returns the final evaluation."""
    ledger = TimeLedger()  # where the wall time goes (goodput.py)
    compilation_cache.enable()  # a no-op when an entry point did it, or the user chose
    distributed.maybe_initialize()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)

    mesh = training_mesh(cfg)
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.default_backend()} devices")
    tokenizer = run_inputs.ensure_tokenizer(
        cfg, workdir, log=log, is_leader=jax.process_index() == 0, barrier=_barrier
    )

    total_steps = cfg.train.steps
    schedule = learning_rate_schedule(cfg.optim, total_steps)
    optimizer = make_optimizer(cfg.optim, total_steps)
    run_state = initial_state(cfg, optimizer, mesh, jax.random.key(cfg.train.seed), log=log)
    state, state_shardings, graphdef = run_state.state, run_state.shardings, run_state.graphdef
    objective = build_objective(
        cfg,
        graphdef,
        optimizer,
        schedule,
        state_shardings,
        mesh,
        run_state.views,
        tokenizer.token_bytes(),
    )
    train_step = objective.train_step

    batch_size = run_inputs.local_batch_size(cfg, jax.process_count())
    where = (jax.process_index(), jax.process_count())
    extra = {}  # what the post-training pipelines attach to each example
    if (
        cfg.data.format == "preference"
        and not needs_reference(cfg)
        and cfg.preference.loss != "simpo"
    ):
        extra["reference_logps"] = reference_table(
            cfg, tokenizer, workdir, state, graphdef, run_state.views, mesh, batch_size, log
        )
    if cfg.data.format == "text":
        train_ds = run_inputs.train_stream(cfg, tokenizer, *where)
    else:
        train_ds = posttrain_inputs.posttrain_train_stream(
            cfg, tokenizer, *where, batch_size, **extra
        )
    train_iter = iter(train_ds)
    fingerprint = run_inputs.data_fingerprint(cfg, tokenizer.sha256)
    data_totals = DataTotals()

    checkpointer = Checkpointer(
        workdir / "checkpoints",
        keep=cfg.train.keep_checkpoints,
        keep_every=cfg.train.keep_every,
    )
    start_step = 0
    from jaxlm.checkpointing.resume_rules import check_resume_config

    accepted: list[str] = []  # config differences train.allow_config_change allowed

    def check_config(saved_cfg: dict, where: str) -> None:
        accepted[:] = check_resume_config(saved_cfg, cfg, where)

    # Newest step that restores and verifies; damaged newer ones are warned about and
    # set aside; none usable is an error (never a silent start from scratch).
    target = abstract_like(state_shardings, jax.eval_shape(lambda s: s, state))
    restored = checkpointer.restore_latest_good(target, check_config=check_config)
    latest = None if restored is None else restored.step
    if restored is not None:
        state, data_state = restored.state, restored.data
        where = str(checkpointer.step_dir(latest))
        run_inputs.check_fingerprint(data_state, fingerprint, where, cfg, log)
        train_iter.set_state(from_jsonable(data_state["iterator"]))
        data_totals = DataTotals(data_state["counts"])
        start_step = latest
        if accepted:
            log(f"config changes accepted on resume: {'; '.join(accepted)}")
        log(f"resumed from {checkpointer.directory}/{latest}")
    if jax.process_index() == 0:  # the run is accepted: from here on it may write
        (workdir / "config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")

    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    val_batches = _eval_batches(cfg, tokenizer, batch_size, **extra)
    # Trained positions per step (both sides of a preference pair; the reference
    # model's forward pass is not counted in MFU).
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * objective.rows_per_example
    flops_tok = flops_per_token(cfg.model, cfg.data.seq_len)
    peak, peak_source = _peak_flops_total(cfg)
    log(
        f"{tokens_per_step} tokens/step; MFU counts {flops_tok / 1e6:.1f} MFLOP/token "
        f"(6N + 12·L·T·d) against {peak / 1e12:.3f} TFLOP/s ({peak_source})"
    )

    # Progress axes for comparing runs (`jaxlm compare`): tokens_seen (trained positions,
    # padding included; an eval record's `tokens` is its held-out count) and model FLOPs (the
    # MFU convention above) trained so far, and wall time. A resumed run's clock goes on
    # from its last record at or before the resumed step, so the time between a kill
    # and the restart is not counted.
    elapsed_offset = _elapsed_before(writer.path, start_step)

    def progress(step: int) -> dict[str, float]:
        return {
            "tokens_seen": step * tokens_per_step,
            "flops": float(step * tokens_per_step * flops_tok),
            "elapsed_s": elapsed_offset + time.perf_counter() - ledger.start,
        }

    def run_eval(step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        # Several CPU processes: many eval programs queued at once (each with a gloo
        # all-reduce) deadlock now and then (~1 run in 4 on jax 0.10.2: one device
        # waits in the all-reduce, the other in XLA's launch semaphore), so each is
        # waited for. Elsewhere they stay queued.
        serial = jax.process_count() > 1 and jax.default_backend() == "cpu"
        results = []
        with jax.set_mesh(mesh):
            for b in val_batches:
                results.append(objective.eval_step(state, host_batch_to_global(b, mesh)))
                if serial:
                    jax.block_until_ready(results[-1])
        out = objective.summarize(jax.device_get(results))
        writer.write(step, "eval", {**out, "eval_s": time.perf_counter() - t0, **progress(step)})
        return out

    bar = _progress(total_steps, start_step, cfg.train.progress_bar)
    pending = None
    window: dict[str, list[float]] = {"loss": [], "time": [], "data": []}
    skips = _SkipCounter(cfg.optim.max_consecutive_spikes)
    train_losses: list[float] = []
    real_fractions: list[float] = []
    final_eval = None
    preempted = False
    step_budget, long_budget = cfg.train.step_timeout_s, cfg.train.first_step_timeout_s

    def report(step: int, metrics, real_frac: float) -> None:
        m = jax.device_get(metrics)
        step_time, data_wait = ledger.step_done()  # data wait of the batches fetched meanwhile
        watchdog.expect(f"step {step + 2}", step_budget)
        _check_finite(step, m)
        skips.add(step, m)
        loss = float(m["loss"])
        train_losses.append(loss)
        window["loss"].append(loss)
        window["time"].append(step_time)
        window["data"].append(data_wait)
        tok_s = tokens_per_step / step_time
        mfu = flops_tok * tok_s / peak
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}")
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == total_steps:
            # Means over the window: per step when train.log_every=1.
            mean_time = float(np.mean(window["time"]))
            writer.write(
                step + 1,
                "train",
                {
                    "loss": float(np.mean(window["loss"])),
                    "grad_norm": float(m["grad_norm"]),
                    "lr": float(m["lr"]),
                    "step_time_s": mean_time,
                    "data_wait_s": float(np.mean(window["data"])),
                    "tokens_per_s": tokens_per_step / mean_time,
                    "mfu": flops_tok * tokens_per_step / mean_time / peak,
                    "real_token_fraction": real_frac,
                    **skips.take_window(),  # steps not applied in this window
                    # A preference step's own numbers (of this window's last step).
                    **{k: float(m[k]) for k in _PREFERENCE_METRICS if k in m},
                    **{f"data_{k}": v for k, v in data_totals.as_dict().items()},
                    **progress(step + 1),
                },
            )
            for v in window.values():
                v.clear()

    # Signals and the watchdog are live from the first step to the end of the run.
    with (
        StopRequest() as stop,
        StepWatchdog(step_budget > 0) as watchdog,
        _saves_settled_on_error(checkpointer, watchdog, long_budget),
    ):
        if cfg.train.eval_at_start and start_step == 0:
            # The starting model's held-out numbers (e.g. the base model's loss on the
            # SFT data), as the step-0 eval record.
            watchdog.expect("evaluation at step 0", long_budget)
            with ledger.phase("eval"):
                ev = run_eval(0)
            log(f"step 0: eval {_eval_text(ev)}")
        ledger.loop_starts()
        watchdog.expect(f"step {start_step + 1} (the first of this run: compiles)", long_budget)
        for step in range(start_step, total_steps):
            with ledger.data_wait():
                host_batch = data_totals.pop_from(next(train_iter))
                # Other "_" keys (e.g. preference pairs' "_where") are not model inputs.
                host_batch = {k: v for k, v in host_batch.items() if not k.startswith("_")}
            checkpointer.raise_if_failed()  # a failed save stops the run at once
            real_frac = float(np.mean(host_batch["segment_ids"] != 0))
            real_fractions.append(real_frac)
            with jax.set_mesh(mesh):
                state, metrics = train_step(state, host_batch_to_global(host_batch, mesh))
            if pending is not None:
                report(*pending)
            pending = (step, metrics, real_frac)

            done = step + 1
            is_last = done == total_steps
            # Every process calls this once per step, in the same order (preemption.py).
            preempted = stop.reached(done) and not is_last
            evaluate = (cfg.train.eval_every and done % cfg.train.eval_every == 0) or is_last
            if evaluate and not preempted:  # preempted: save at once, skip this eval
                report(*pending)
                pending = None
                watchdog.expect(f"evaluation at step {done}", long_budget)
                with ledger.phase("eval"):
                    ev = final_eval = run_eval(done)
                log(f"step {done}: eval {_eval_text(ev)}")
                watchdog.expect(f"step {done + 1}", step_budget)
            every = cfg.train.checkpoint_every
            if (every and done % every == 0) or is_last or preempted:
                if pending is not None:
                    report(*pending)
                    pending = None
                watchdog.expect(f"checkpoint save at step {done}", long_budget)
                with ledger.phase("checkpoint"):
                    data_state = {
                        "iterator": train_iter.get_state(),
                        **fingerprint,  # documents_per_source, content_per_source, ...
                        "counts": data_totals.as_dict(),
                    }
                    checkpointer.save(done, state, data_state, cfg.to_json())
                    if preempted:  # the process may be killed soon: the save must be on disk
                        checkpointer.wait()
                writer.write(done, "checkpoint", {"blocking_s": ledger.last_phase_s})
                watchdog.expect(f"step {done + 1}", step_budget)
            if preempted:
                # Every process says so: each must have saved the same step.
                who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
                why = f"{stop.signal_name} received" if stop.signal_name else "preemption notice"
                print(
                    f"{who}{why}: saved step {done} to {checkpointer.directory} and stopped; "
                    "run the same command again to resume from there",
                    flush=True,
                )
                break
        if pending is not None:
            report(*pending)
        if bar is not None:
            bar.close()

        watchdog.expect("the end of the run (last save, evaluation, generation)", long_budget)
        with ledger.phase("checkpoint"):
            checkpointer.wait()
            checkpointer.close()
        done = start_step + len(train_losses)
        result = RunResult(
            workdir=workdir,
            steps=done,
            final_eval=final_eval or {},
            artefacts={
                "config": workdir / "config.json",
                "tokenizer": tokenizer.path,
                "metrics": writer.path,
                "tensorboard": writer.tensorboard_dir,
                "checkpoints": checkpointer.directory,
            },
            train_losses=train_losses,
            preempted=preempted,
        )
        if not preempted:  # in a grace period before SIGKILL, only the save matters
            if final_eval is None:  # resumed at the last step: nothing ran, evaluate anyway
                with ledger.phase("eval"):
                    result.final_eval = run_eval(total_steps)
            _finish(
                cfg,
                result,
                writer,
                graphdef,
                run_state.views.policy(state.params, state.frozen),
                tokenizer,
            )
        _barrier("jaxlm_run_end")  # healthy processes reach JAX's shutdown barrier together
        ledger.lap("finish")
    result.timing = ledger.summary()
    result.wall_seconds = result.timing["wall_s"]
    writer.write(
        done,
        "summary",
        {
            **result.timing,
            "steps": done,
            "preempted": int(preempted),
            **skips.run,  # steps of this run (not of earlier, resumed-from runs) not applied
            "real_token_fraction": float(np.mean(real_fractions)) if real_fractions else 0.0,
            **{f"data_{k}": v for k, v in data_totals.as_dict().items()},
            "gzip_bits_per_byte": result.gzip_bits_per_byte,
            **{f"eval_{k}": v for k, v in result.final_eval.items()},
        },
    )
    writer.close()
    return result


def _elapsed_before(metrics_path: Path, step: int) -> float:
    """The largest `elapsed_s` logged at or before `step` (0 if none); a line cut short
    by a kill is ignored."""
    if step == 0 or not metrics_path.is_file():
        return 0.0
    best = 0.0
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            best = max(best, float(record.get("elapsed_s", 0.0)))
    return best


def _finish(cfg: Config, result: RunResult, writer, graphdef, model_params, tokenizer) -> None:
    """End-of-run extras: gzip baseline, loss plot, a greedy completion."""
    texts = run_inputs.eval_texts(cfg) if cfg.data.format == "text" else []
    if texts:  # pre-tokenized eval sources have no text to compress
        result.gzip_bits_per_byte, _ = gzip_bits_per_byte(texts)
    if jax.process_index() == 0:
        png = result.workdir / "loss_curve.png"
        plot_loss_curves([writer.path], png, labels=[cfg.name])
        result.artefacts["loss_curve"] = png
    if cfg.train.generate_prompt:
        # A sample of what the model learnt, never a reason to fail the run: the prompt
        # keeps its end and the completion is cut to fit model.max_seq_len.
        limit = cfg.model.max_seq_len
        prompt = [tokenizer.bos_id, *tokenizer.encode(cfg.train.generate_prompt)][-(limit - 1) :]
        out = Generator(cfg.model, graphdef, model_params).generate(
            [prompt],
            max_new_tokens=min(cfg.train.generate_tokens, limit - len(prompt)),
            stop_ids=[tokenizer.eos_id],
        )
        result.prompt = cfg.train.generate_prompt
        result.completion = tokenizer.decode(out.tokens[0])
